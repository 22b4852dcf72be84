/*
 * policy.c - the per-recipient policy layer: allow/block lists at global,
 * domain and user level (most specific level wins), sub-address resolution
 * (user+tag@domain -> user@domain), HELO host checks, and rate/concurrency
 * accounting tables for per-client limits.
 *
 * Lists are built once and then only read, so workers share them. The rate
 * tables are per worker (RSS already pins a client's flows to one core), so
 * they take no locks either.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"

/* ---- wildcard matching ---- */

/* Longest pattern the matcher takes; config patterns are short. */
#define GLOB_MAX_TOKENS 128

enum tok_kind { T_LIT, T_ONE, T_STAR, T_DIGIT, T_DIGITS_STAR };

struct tok {
    enum tok_kind kind;
    char c;
};

/*
 * Compile a pattern into tokens: `*` any run, `?` one char, and with
 * hash_digits `#` = one or more digits (a digit, then any run of digits).
 */
static int glob_compile(const char *pat, bool hash_digits, struct tok *t)
{
    int n = 0;
    for (const char *p = pat; *p; p++) {
        if (n + 2 > GLOB_MAX_TOKENS)
            return -1;
        if (*p == '*')
            t[n++] = (struct tok){T_STAR, 0};
        else if (*p == '?')
            t[n++] = (struct tok){T_ONE, 0};
        else if (*p == '#' && hash_digits) {
            t[n++] = (struct tok){T_DIGIT, 0};
            t[n++] = (struct tok){T_DIGITS_STAR, 0};
        } else
            t[n++] = (struct tok){T_LIT, (char)tolower((unsigned char)*p)};
    }
    return n;
}

/* Follow the tokens that may match nothing. */
static void glob_closure(const struct tok *t, int n, bool *set)
{
    for (int i = 0; i < n; i++)
        if (set[i] && (t[i].kind == T_STAR || t[i].kind == T_DIGITS_STAR))
            set[i + 1] = true;
}

/*
 * NFA simulation: O(len(text) x len(pattern)) with no backtracking, so a
 * hostile HELO cannot make matching slow.
 */
static bool glob_match(const char *pat, const char *text, bool hash_digits)
{
    struct tok t[GLOB_MAX_TOKENS];
    int n = glob_compile(pat, hash_digits, t);
    if (n < 0)
        return false;
    bool cur[GLOB_MAX_TOKENS + 1] = {false}, next[GLOB_MAX_TOKENS + 1];
    cur[0] = true;
    glob_closure(t, n, cur);
    for (const char *s = text; *s; s++) {
        char c = (char)tolower((unsigned char)*s);
        bool digit = c >= '0' && c <= '9';
        memset(next, 0, sizeof(next));
        bool any = false;
        for (int i = 0; i < n; i++) {
            if (!cur[i])
                continue;
            switch (t[i].kind) {
            case T_LIT:
                if (t[i].c == c)
                    next[i + 1] = any = true;
                break;
            case T_ONE:
                next[i + 1] = any = true;
                break;
            case T_STAR:
                next[i] = any = true;
                break;
            case T_DIGIT:
                if (digit)
                    next[i + 1] = any = true;
                break;
            case T_DIGITS_STAR:
                if (digit)
                    next[i] = any = true;
                break;
            }
        }
        if (!any)
            return false;
        glob_closure(t, n, next);
        memcpy(cur, next, sizeof(cur));
    }
    return cur[n];
}

/* ---- HELO ---- */

const char *const mx_policy_helo_defaults[] = {
    "localhost", "friend", "user", "ylmf-pc", "-*", "*_*", "#.#.#.#", "*.invalid", "*/*", "*|*",
    NULL,
};

int mx_policy_helo_match(const char *helo, const char *const *patterns, size_t n)
{
    if (!helo || !patterns)
        return -1;
    for (size_t i = 0; i < n && patterns[i]; i++)
        if (glob_match(patterns[i], helo, true))
            return (int)i;
    return -1;
}

/* ---- addresses ---- */

int mx_policy_resolve_address(const char *addr, char sep, char *out, size_t outlen)
{
    if (!addr)
        return -EINVAL;
    const char *at = strrchr(addr, '@');
    if (!at || at == addr || !at[1])
        return -EINVAL;
    size_t local = (size_t)(at - addr);
    /* a quoted local part is taken as it is; "+tag" needs a user before it */
    if (sep && addr[0] != '"') {
        const char *s = memchr(addr, sep, local);
        if (s && s > addr)
            local = (size_t)(s - addr);
    }
    size_t dl = strlen(at);
    if (local + dl + 1 > outlen)
        return -ENOSPC;
    for (size_t i = 0; i < local; i++)
        out[i] = (char)tolower((unsigned char)addr[i]);
    for (size_t i = 0; i < dl; i++)
        out[local + i] = (char)tolower((unsigned char)at[i]);
    out[local + dl] = '\0';
    return 0;
}

/* ---- lists ---- */

enum pat_kind { P_ADDR, P_DOMAIN, P_GLOB_ADDR, P_GLOB_DOMAIN, P_CIDR };

struct entry {
    enum mx_policy_level level;
    char *scope; /* lower-case: "", domain or user@domain */
    enum mx_policy_list list;
    enum pat_kind kind;
    char *match;   /* lower-case form used to match */
    char *pattern; /* as written, for the result */
    struct mx_cidr cidr;
};

struct mx_policy {
    char sep;
    bool allow_over_block;
    struct entry *v;
    size_t n, cap;
};

int mx_policy_new(char subaddress_sep, bool allow_over_block, struct mx_policy **out)
{
    struct mx_policy *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->sep = subaddress_sep;
    p->allow_over_block = allow_over_block;
    *out = p;
    return 0;
}

void mx_policy_free(struct mx_policy *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n; i++) {
        free(p->v[i].scope);
        free(p->v[i].match);
        free(p->v[i].pattern);
    }
    free(p->v);
    free(p);
}

static bool domain_chars(const char *d)
{
    if (!*d)
        return false;
    for (const char *s = d; *s; s++)
        if (!(isalnum((unsigned char)*s) || *s == '-' || *s == '.' || *s == '_' ||
              (unsigned char)*s >= 0x80))
            return false;
    return d[0] != '.' && d[strlen(d) - 1] != '.';
}

static char *lower(const char *s)
{
    char *d = strdup(s);
    if (d)
        for (char *p = d; *p; p++)
            *p = (char)tolower((unsigned char)*p);
    return d;
}

int mx_policy_add(struct mx_policy *p, const char *scope, enum mx_policy_list list,
                  const char *pattern)
{
    if (!p || !pattern || !*pattern || (list != MX_POLICY_ALLOW && list != MX_POLICY_BLOCK) ||
        strlen(pattern) >= 320)
        return -EINVAL;
    struct entry e = {.list = list};
    char buf[320];
    /* the scope */
    if (!scope || !*scope) {
        e.level = MX_POLICY_GLOBAL;
        e.scope = strdup("");
    } else if (strchr(scope, '@')) {
        if (mx_policy_resolve_address(scope, p->sep, buf, sizeof(buf)) != 0)
            return -EINVAL;
        e.level = MX_POLICY_USER;
        e.scope = strdup(buf);
    } else {
        if (!domain_chars(scope))
            return -EINVAL;
        e.level = MX_POLICY_DOMAIN;
        e.scope = lower(scope);
    }
    if (!e.scope)
        return -ENOMEM;
    /* the pattern */
    int rc = 0;
    if (pattern[0] != '!' && mx_config_parse_cidr(pattern, &e.cidr) == 0) {
        e.kind = P_CIDR;
        e.match = strdup(pattern);
    } else if (strpbrk(pattern, "*?")) {
        e.kind = strchr(pattern, '@') ? P_GLOB_ADDR : P_GLOB_DOMAIN;
        struct tok t[GLOB_MAX_TOKENS];
        if (glob_compile(pattern, false, t) < 0)
            rc = -EINVAL;
        e.match = lower(pattern);
    } else if (pattern[0] == '@') {
        e.kind = P_DOMAIN;
        if (!domain_chars(pattern + 1))
            rc = -EINVAL;
        e.match = lower(pattern + 1);
    } else if (strchr(pattern, '@')) {
        e.kind = P_ADDR;
        if (mx_policy_resolve_address(pattern, p->sep, buf, sizeof(buf)) != 0)
            rc = -EINVAL;
        e.match = strdup(buf);
    } else {
        e.kind = P_DOMAIN;
        if (!domain_chars(pattern))
            rc = -EINVAL;
        e.match = lower(pattern);
    }
    e.pattern = strdup(pattern);
    if (rc == 0 && (!e.match || !e.pattern))
        rc = -ENOMEM;
    if (rc == 0 && p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 16;
        struct entry *nv = realloc(p->v, cap * sizeof(*nv));
        if (!nv)
            rc = -ENOMEM;
        else {
            p->v = nv;
            p->cap = cap;
        }
    }
    if (rc != 0) {
        free(e.scope);
        free(e.match);
        free(e.pattern);
        return rc;
    }
    p->v[p->n++] = e;
    return 0;
}

/* Does the client address fall in a CIDR (IPv4-mapped IPv6 as IPv4)? */
static bool cidr_contains(const struct mx_cidr *c, const struct sockaddr *sa)
{
    uint8_t key[17];
    int n = mx_ratelimit_client_key(sa, false, key);
    if (n < 0)
        return false;
    int family = n == 5 ? AF_INET : AF_INET6;
    if (family != c->family)
        return false;
    const uint8_t *a = key + 1;
    unsigned bits = c->prefix, bytes = bits / 8, rest = bits % 8;
    if (memcmp(a, c->addr, bytes) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a[bytes] & mask) == (c->addr[bytes] & mask);
}

static bool entry_matches(const struct entry *e, const char *sender, const char *sdomain,
                          const struct sockaddr *client)
{
    switch (e->kind) {
    case P_CIDR:
        return client && cidr_contains(&e->cidr, client);
    case P_ADDR:
        return *sender && strcmp(e->match, sender) == 0;
    case P_DOMAIN:
        return *sdomain && strcmp(e->match, sdomain) == 0;
    case P_GLOB_ADDR:
        return *sender && glob_match(e->match, sender, false);
    case P_GLOB_DOMAIN:
        return *sdomain && glob_match(e->match, sdomain, false);
    }
    return false;
}

int mx_policy_check_sender(const struct mx_policy *p, const char *rcpt, const char *sender,
                           const struct sockaddr *client, struct mx_policy_result *res)
{
    char user[320], from[320] = "";
    memset(res, 0, sizeof(*res));
    res->scope = "";
    if (!p || mx_policy_resolve_address(rcpt, p->sep, user, sizeof(user)) != 0)
        return -EINVAL;
    const char *rdomain = strrchr(user, '@') + 1;
    const char *sdomain = "";
    /* a sender that is not an address (e.g. "<>") only meets CIDR entries */
    if (sender && *sender && mx_policy_resolve_address(sender, p->sep, from, sizeof(from)) == 0)
        sdomain = strrchr(from, '@') + 1;
    else
        from[0] = '\0';
    const char *scopes[3] = {"", rdomain, user};
    for (int level = MX_POLICY_USER; level >= MX_POLICY_GLOBAL; level--) {
        const struct entry *allow = NULL, *block = NULL;
        for (size_t i = 0; i < p->n; i++) {
            const struct entry *e = &p->v[i];
            if ((int)e->level != level || strcmp(e->scope, scopes[level]) != 0)
                continue;
            if (e->list == MX_POLICY_ALLOW ? allow != NULL : block != NULL)
                continue;
            if (entry_matches(e, from, sdomain, client)) {
                if (e->list == MX_POLICY_ALLOW)
                    allow = e;
                else
                    block = e;
            }
        }
        if (!allow && !block)
            continue;
        const struct entry *d = block && !(allow && p->allow_over_block) ? block : allow;
        res->verdict = d == block ? MX_POLICY_BLOCKED : MX_POLICY_ALLOWED;
        res->level = (enum mx_policy_level)level;
        res->scope = d->scope;
        res->pattern = d->pattern;
        return 0;
    }
    return 0;
}

/* ---- rate and concurrency accounting ---- */

/* How far a key may sit from its hash slot; bounds every lookup. */
#define PROBE 16

struct rl_slot {
    uint8_t key[17];
    uint8_t keylen; /* 0: never used */
    uint64_t window;  /* index of the current fixed window */
    uint32_t cur, prev; /* events in this and the previous window */
    uint32_t held;      /* concurrency slots taken */
};

struct mx_ratelimit {
    struct rl_slot *slots;
    size_t mask;
    uint32_t window_ms;
    uint64_t last_window; /* newest window seen: lets acquire() reuse dead slots */
};

int mx_ratelimit_client_key(const struct sockaddr *sa, bool network, uint8_t key[17])
{
    if (!sa)
        return -EINVAL;
    if (sa->sa_family == AF_INET) {
        key[0] = 4;
        memcpy(key + 1, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a)) {
            key[0] = 4;
            memcpy(key + 1, &a->s6_addr[12], 4);
        } else {
            key[0] = 6;
            memcpy(key + 1, a->s6_addr, 16);
            if (network)
                memset(key + 9, 0, 8); /* the /64 */
            return 17;
        }
    } else {
        return -EINVAL;
    }
    if (network)
        key[4] = 0; /* the /24 */
    return 5;
}

int mx_ratelimit_new(size_t capacity, uint32_t window_ms, struct mx_ratelimit **out)
{
    if (capacity == 0 || capacity > (1u << 24) || window_ms == 0)
        return -EINVAL;
    size_t size = 16;
    while (size < capacity * 2)
        size *= 2;
    struct mx_ratelimit *rl = calloc(1, sizeof(*rl));
    if (!rl)
        return -ENOMEM;
    rl->slots = calloc(size, sizeof(*rl->slots));
    if (!rl->slots) {
        free(rl);
        return -ENOMEM;
    }
    rl->mask = size - 1;
    rl->window_ms = window_ms;
    *out = rl;
    return 0;
}

void mx_ratelimit_free(struct mx_ratelimit *rl)
{
    if (!rl)
        return;
    free(rl->slots);
    free(rl);
}

static uint64_t key_hash(const uint8_t *k, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ k[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

/* A slot whose counts have expired and that holds no concurrency slot. */
static bool slot_dead(const struct mx_ratelimit *rl, const struct rl_slot *s)
{
    return s->keylen == 0 || (s->held == 0 && s->window + 1 < rl->last_window);
}

/* Find key's slot, or claim a free/dead one near its hash; NULL when full. */
static struct rl_slot *rl_find(struct mx_ratelimit *rl, const uint8_t *key, size_t keylen,
                               bool create)
{
    size_t h = (size_t)key_hash(key, keylen);
    struct rl_slot *free_slot = NULL;
    for (size_t i = 0; i < PROBE; i++) {
        struct rl_slot *s = &rl->slots[(h + i) & rl->mask];
        if (s->keylen == keylen && memcmp(s->key, key, keylen) == 0)
            return s;
        if (!free_slot && slot_dead(rl, s))
            free_slot = s;
    }
    if (!create || !free_slot)
        return NULL;
    memset(free_slot, 0, sizeof(*free_slot));
    memcpy(free_slot->key, key, keylen);
    free_slot->keylen = (uint8_t)keylen;
    free_slot->window = rl->last_window;
    return free_slot;
}

int mx_ratelimit_hit(struct mx_ratelimit *rl, const uint8_t *key, size_t keylen, uint64_t now_ms,
                     uint32_t n, uint32_t limit, uint32_t *count)
{
    if (!rl || !key || keylen == 0 || keylen > 17)
        return -EINVAL;
    uint64_t w = now_ms / rl->window_ms;
    if (w > rl->last_window)
        rl->last_window = w;
    struct rl_slot *s = rl_find(rl, key, keylen, true);
    if (!s)
        return -ENOSPC;
    if (s->window != w) {
        /* roll the fixed windows forward */
        s->prev = s->window + 1 == w ? s->cur : 0;
        s->cur = 0;
        s->window = w;
    }
    /* sliding estimate: the part of the previous window still inside it */
    uint64_t into = now_ms % rl->window_ms;
    uint64_t est = (uint64_t)s->prev * (rl->window_ms - into) / rl->window_ms + s->cur;
    if (est + n > limit) {
        if (count)
            *count = (uint32_t)(est > UINT32_MAX ? UINT32_MAX : est);
        return -EAGAIN;
    }
    s->cur += n;
    if (count)
        *count = (uint32_t)(est + n);
    return 0;
}

int mx_ratelimit_acquire(struct mx_ratelimit *rl, const uint8_t *key, size_t keylen,
                         uint32_t limit)
{
    if (!rl || !key || keylen == 0 || keylen > 17)
        return -EINVAL;
    struct rl_slot *s = rl_find(rl, key, keylen, true);
    if (!s)
        return -ENOSPC;
    if (s->held >= limit)
        return -EAGAIN;
    s->held++;
    return 0;
}

void mx_ratelimit_release(struct mx_ratelimit *rl, const uint8_t *key, size_t keylen)
{
    if (!rl || !key || keylen == 0 || keylen > 17)
        return;
    struct rl_slot *s = rl_find(rl, key, keylen, false);
    if (s && s->held > 0)
        s->held--;
}
