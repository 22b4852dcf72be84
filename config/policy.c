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
#include <strings.h>

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

static bool is_wild(char c, bool hash_digits)
{
    return c == '*' || c == '?' || (c == '#' && hash_digits);
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
    /* The literal text before the first wildcard and after the last one must be
     * there: checked first, it turns most texts away without the NFA. */
    size_t pl = strlen(pat), tl = strlen(text), pre = 0, suf = 0;
    while (pre < pl && !is_wild(pat[pre], hash_digits))
        pre++;
    if (pre == pl)
        return pl == tl && strcasecmp(pat, text) == 0;
    while (!is_wild(pat[pl - 1 - suf], hash_digits))
        suf++;
    if (pre + suf > tl || strncasecmp(pat, text, pre) != 0 ||
        strncasecmp(pat + pl - suf, text + tl - suf, suf) != 0)
        return false;
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
        memset(next, 0, (size_t)n + 1);
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
        memcpy(cur, next, (size_t)n + 1);
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

/* ---- hashing (FNV-1a; keys come from the config, lookups are bounded) ---- */

#define FNV_INIT 1469598103934665603ull

static uint64_t fnv_more(uint64_t h, const void *k, size_t n)
{
    const uint8_t *b = k;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static uint64_t fnv_final(uint64_t h)
{
    return h ^ (h >> 29);
}

/* ---- lists ---- */

enum pat_kind { P_ADDR, P_DOMAIN, P_GLOB_ADDR, P_GLOB_DOMAIN, P_CIDR };

/* No entry / no node. */
#define NIL UINT32_MAX

struct entry {
    enum mx_policy_level level;
    char *scope; /* lower-case: "", domain or user@domain */
    enum mx_policy_list list;
    enum pat_kind kind;
    char *match;   /* lower-case form used to match */
    char *pattern; /* as written, for the result */
    struct mx_cidr cidr;
    uint64_t hash; /* P_ADDR, P_DOMAIN: key_of() */
    uint32_t next; /* next entry in its hash chain or on its trie node, in order */
};

/* A node of the binary prefix trie of one address family. */
struct trie_node {
    uint32_t child[2];
    uint32_t first; /* entries whose prefix ends here, in insertion order */
};

/*
 * The lists are indexed so that a lookup costs the same with ten entries or a
 * million: addresses and domains in a chained hash table keyed by (level,
 * scope, list, value); CIDR entries in a binary trie per family, walked along
 * the client's address; only wildcard entries are tried one by one. Where
 * several entries match, the earliest one written wins, as with a plain scan.
 */
struct mx_policy {
    char sep;
    bool allow_over_block;
    struct entry *v;
    size_t n, cap;
    uint32_t *bucket; /* hash chains: heads, NIL when empty */
    size_t nbucket;   /* power of two */
    size_t nhashed;
    struct trie_node *node; /* node[0]: IPv4 root, node[1]: IPv6 root */
    size_t nnode, capnode;
    uint32_t *globs; /* wildcard entries in order */
    size_t nglob, capglob;
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
    free(p->bucket);
    free(p->node);
    free(p->globs);
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

/* Hash key of an address/domain entry: level, list, scope and value. */
static uint64_t key_of(enum mx_policy_level level, enum mx_policy_list list, const char *scope,
                       const char *value)
{
    uint8_t lv[2] = {(uint8_t)level, (uint8_t)list};
    uint64_t h = fnv_more(FNV_INIT, lv, 2);
    h = fnv_more(h, scope, strlen(scope) + 1);
    return fnv_final(fnv_more(h, value, strlen(value)));
}

/* Append entry i at the end of a chain (chains stay in insertion order). */
static void chain_append(struct mx_policy *p, uint32_t *head, uint32_t i)
{
    while (*head != NIL)
        head = &p->v[*head].next;
    *head = i;
}

static int hash_insert(struct mx_policy *p, uint32_t i)
{
    if (p->nhashed + 1 > p->nbucket) {
        size_t nb = p->nbucket ? p->nbucket * 2 : 64;
        uint32_t *b = malloc(nb * sizeof(*b));
        if (!b)
            return -ENOMEM;
        for (size_t k = 0; k < nb; k++)
            b[k] = NIL;
        /* rehash in entry order so every chain stays in insertion order */
        for (uint32_t k = 0; k < i; k++) {
            struct entry *e = &p->v[k];
            if (e->kind == P_ADDR || e->kind == P_DOMAIN) {
                e->next = NIL;
                chain_append(p, &b[e->hash & (nb - 1)], k);
            }
        }
        free(p->bucket);
        p->bucket = b;
        p->nbucket = nb;
    }
    struct entry *e = &p->v[i];
    e->hash = key_of(e->level, e->list, e->scope, e->match);
    e->next = NIL;
    chain_append(p, &p->bucket[e->hash & (p->nbucket - 1)], i);
    p->nhashed++;
    return 0;
}

static int trie_new_node(struct mx_policy *p, uint32_t *out)
{
    if (p->nnode == p->capnode) {
        size_t cap = p->capnode ? p->capnode * 2 : 64;
        struct trie_node *nn = realloc(p->node, cap * sizeof(*nn));
        if (!nn)
            return -ENOMEM;
        p->node = nn;
        p->capnode = cap;
    }
    p->node[p->nnode] = (struct trie_node){{NIL, NIL}, NIL};
    *out = (uint32_t)p->nnode++;
    return 0;
}

static int trie_insert(struct mx_policy *p, uint32_t i)
{
    uint32_t root;
    while (p->nnode < 2)
        if (trie_new_node(p, &root) != 0)
            return -ENOMEM;
    const struct mx_cidr *c = &p->v[i].cidr;
    uint32_t n = c->family == AF_INET ? 0 : 1;
    for (unsigned bit = 0; bit < c->prefix; bit++) {
        unsigned b = (c->addr[bit / 8] >> (7 - bit % 8)) & 1;
        if (p->node[n].child[b] == NIL) {
            uint32_t k;
            if (trie_new_node(p, &k) != 0)
                return -ENOMEM;
            p->node[n].child[b] = k;
        }
        n = p->node[n].child[b];
    }
    p->v[i].next = NIL;
    chain_append(p, &p->node[n].first, i);
    return 0;
}

static int glob_insert(struct mx_policy *p, uint32_t i)
{
    if (p->nglob == p->capglob) {
        size_t cap = p->capglob ? p->capglob * 2 : 16;
        uint32_t *g = realloc(p->globs, cap * sizeof(*g));
        if (!g)
            return -ENOMEM;
        p->globs = g;
        p->capglob = cap;
    }
    p->globs[p->nglob++] = i;
    return 0;
}

/* Put the newest entry (already in p->v) into its index. */
static int index_entry(struct mx_policy *p, uint32_t i)
{
    switch (p->v[i].kind) {
    case P_ADDR:
    case P_DOMAIN:
        return hash_insert(p, i);
    case P_CIDR:
        return trie_insert(p, i);
    default:
        return glob_insert(p, i);
    }
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
    if (rc == 0 && p->n >= NIL - 1)
        rc = -ENOSPC;
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
    if (rc == 0) {
        p->v[p->n] = e;
        rc = index_entry(p, (uint32_t)p->n);
    }
    if (rc != 0) {
        free(e.scope);
        free(e.match);
        free(e.pattern);
        return rc;
    }
    p->n++;
    return 0;
}

/* The earliest address/domain entry of (level, scope, list) equal to value. */
static uint32_t hash_first(const struct mx_policy *p, enum mx_policy_level level,
                           const char *scope, enum mx_policy_list list, const char *value)
{
    if (!*value || !p->nbucket)
        return NIL;
    uint64_t h = key_of(level, list, scope, value);
    for (uint32_t i = p->bucket[h & (p->nbucket - 1)]; i != NIL; i = p->v[i].next) {
        const struct entry *e = &p->v[i];
        if (e->hash == h && e->level == level && e->list == list &&
            strcmp(e->scope, scope) == 0 && strcmp(e->match, value) == 0)
            return i; /* chains are in insertion order */
    }
    return NIL;
}

/* best[level][list]: earliest matching entry so far; take i if it is earlier. */
static void take(uint32_t best[3][2], const struct entry *e, uint32_t i)
{
    uint32_t *b = &best[e->level][e->list == MX_POLICY_ALLOW ? 0 : 1];
    if (i < *b)
        *b = i;
}

/* CIDR entries containing the client: one walk down the family's trie. */
static void trie_matches(const struct mx_policy *p, const struct sockaddr *client,
                         const char *const scopes[3], uint32_t best[3][2])
{
    uint8_t key[17];
    int klen = client && p->nnode >= 2 ? mx_ratelimit_client_key(client, false, key) : -1;
    if (klen < 0)
        return;
    unsigned bits = klen == 5 ? 32 : 128;
    uint32_t n = klen == 5 ? 0 : 1;
    for (unsigned bit = 0;; bit++) {
        for (uint32_t i = p->node[n].first; i != NIL; i = p->v[i].next)
            if (strcmp(p->v[i].scope, scopes[p->v[i].level]) == 0)
                take(best, &p->v[i], i);
        if (bit == bits)
            break;
        n = p->node[n].child[(key[1 + bit / 8] >> (7 - bit % 8)) & 1];
        if (n == NIL)
            break;
    }
}

/* Wildcard entries, one by one (those that could still be the earliest). */
static void glob_matches(const struct mx_policy *p, const char *sender, const char *sdomain,
                         const char *const scopes[3], uint32_t best[3][2])
{
    for (size_t k = 0; k < p->nglob; k++) {
        uint32_t i = p->globs[k];
        const struct entry *e = &p->v[i];
        if (i >= best[e->level][e->list == MX_POLICY_ALLOW ? 0 : 1] ||
            strcmp(e->scope, scopes[e->level]) != 0)
            continue;
        const char *subject = e->kind == P_GLOB_ADDR ? sender : sdomain;
        if (*subject && glob_match(e->match, subject, false))
            take(best, e, i);
    }
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
    const char *const scopes[3] = {"", rdomain, user};
    uint32_t best[3][2]; /* [level][allow, block] */
    for (int level = 0; level < 3; level++) {
        for (int l = 0; l < 2; l++) {
            enum mx_policy_list list = l == 0 ? MX_POLICY_ALLOW : MX_POLICY_BLOCK;
            uint32_t a = hash_first(p, (enum mx_policy_level)level, scopes[level], list, from);
            uint32_t d = hash_first(p, (enum mx_policy_level)level, scopes[level], list, sdomain);
            best[level][l] = a < d ? a : d;
        }
    }
    trie_matches(p, client, scopes, best);
    glob_matches(p, from, sdomain, scopes, best);
    for (int level = MX_POLICY_USER; level >= MX_POLICY_GLOBAL; level--) {
        uint32_t allow = best[level][0], block = best[level][1];
        if (allow == NIL && block == NIL)
            continue;
        uint32_t d = block != NIL && !(allow != NIL && p->allow_over_block) ? block : allow;
        res->verdict = d == block ? MX_POLICY_BLOCKED : MX_POLICY_ALLOWED;
        res->level = (enum mx_policy_level)level;
        res->scope = p->v[d].scope;
        res->pattern = p->v[d].pattern;
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
    return fnv_final(fnv_more(FNV_INIT, k, n));
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
