/*
 * stats.c - the counter registry (one cache-line-aligned slot per worker),
 * snapshots, quantiles from log2 histograms, and the three renderings of a
 * snapshot (text, JSON, Prometheus) plus the JSON parser mxctl uses to read
 * a snapshot back from the control socket.
 */
#include "console/console.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

_Thread_local struct mx_stats_slot *mx_stats_tls;
struct mx_stats_slot mx_stats_shared;

static struct mx_stats_slot *g_slots;
static unsigned g_nslots;

/*
 * Rule hits by name: one open-addressing table per slot, written only by the
 * slot's thread (a name is written before its count becomes non-zero, and a
 * reader skips zero counts), plus one shared table under a lock.
 */
struct rule_table {
    struct mx_stats_rule e[MX_STATS_RULES_PER_SLOT];
    uint64_t untracked;
};

static struct rule_table *g_rules;  /* g_nslots tables */
static struct rule_table g_rules_shared;
static pthread_mutex_t g_rules_lock = PTHREAD_MUTEX_INITIALIZER;

struct counter_info {
    const char *name, *labels, *help, *id;
    char kind;
};

static const struct counter_info counters[MX_STAT__COUNT] = {
#define MX_STAT_INFO(id_, g, k, n, l, h) [MX_STAT_##id_] = {n, l, h, #id_, #k[0]},
    MX_STATS_COUNTERS(MX_STAT_INFO)
#undef MX_STAT_INFO
};

struct hist_info {
    const char *name, *help, *id;
};

static const struct hist_info hists[MX_HIST__COUNT] = {
#define MX_HIST_INFO(id_, n, h) [MX_HIST_##id_] = {n, h, #id_},
    MX_STATS_HISTOGRAMS(MX_HIST_INFO)
#undef MX_HIST_INFO
};

/* Lower-case keys for JSON/text, made once from the enum names. */
static char counter_keys[MX_STAT__COUNT][48];
static char hist_keys[MX_HIST__COUNT][32];
static pthread_once_t keys_once = PTHREAD_ONCE_INIT;

static void lower(char *dst, size_t n, const char *src)
{
    size_t i = 0;
    for (; src[i] && i + 1 < n; i++)
        dst[i] = (char)tolower((unsigned char)src[i]);
    dst[i] = '\0';
}

static void make_keys(void)
{
    for (int i = 0; i < MX_STAT__COUNT; i++)
        lower(counter_keys[i], sizeof(counter_keys[i]), counters[i].id);
    for (int i = 0; i < MX_HIST__COUNT; i++)
        lower(hist_keys[i], sizeof(hist_keys[i]), hists[i].id);
}

const char *mx_stats_key(enum mx_stat id)
{
    pthread_once(&keys_once, make_keys);
    return (unsigned)id < MX_STAT__COUNT ? counter_keys[id] : "";
}

static const char *hist_key(enum mx_hist id)
{
    pthread_once(&keys_once, make_keys);
    return hist_keys[id];
}

const char *mx_stats_name(enum mx_stat id)
{
    return (unsigned)id < MX_STAT__COUNT ? counters[id].name : "";
}

const char *mx_stats_labels(enum mx_stat id)
{
    return (unsigned)id < MX_STAT__COUNT ? counters[id].labels : "";
}

const char *mx_stats_help(enum mx_stat id)
{
    return (unsigned)id < MX_STAT__COUNT ? counters[id].help : "";
}

char mx_stats_kind(enum mx_stat id)
{
    return (unsigned)id < MX_STAT__COUNT ? counters[id].kind : 'C';
}

int mx_stats_init(unsigned nslots)
{
    if (nslots == 0 || nslots > MX_STATS_MAX_SLOTS)
        return -EINVAL;
    struct mx_stats_slot *s = aligned_alloc(64, sizeof(*s) * nslots);
    if (!s)
        return -ENOMEM;
    memset(s, 0, sizeof(*s) * nslots);
    struct rule_table *r = calloc(nslots, sizeof(*r));
    if (!r) {
        free(s);
        return -ENOMEM;
    }
    mx_stats_fini();
    memset(&mx_stats_shared, 0, sizeof(mx_stats_shared));
    memset(&g_rules_shared, 0, sizeof(g_rules_shared));
    g_slots = s;
    g_rules = r;
    g_nslots = nslots;
    return 0;
}

void mx_stats_fini(void)
{
    free(g_slots);
    free(g_rules);
    g_rules = NULL;
    g_slots = NULL;
    g_nslots = 0;
    mx_stats_tls = NULL;
}

unsigned mx_stats_slots(void)
{
    return g_nslots;
}

int mx_stats_bind_slot(unsigned i)
{
    if (!g_slots || i >= g_nslots)
        return -EINVAL;
    mx_stats_tls = &g_slots[i];
    return 0;
}

static inline void slot_add(uint64_t *p, uint64_t n)
{
    __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + n, __ATOMIC_RELAXED);
}

void mx_stats_observe(enum mx_hist id, uint64_t us)
{
    struct mx_stats_slot *s = mx_stats_tls;
    unsigned b = mx_stats_bucket(us);
    if (s) {
        slot_add(&s->h[id].bucket[b], 1);
        slot_add(&s->h[id].count, 1);
        slot_add(&s->h[id].sum_us, us);
    } else {
        struct mx_stats_hist *h = &mx_stats_shared.h[id];
        __atomic_fetch_add(&h->bucket[b], 1, __ATOMIC_RELAXED);
        __atomic_fetch_add(&h->count, 1, __ATOMIC_RELAXED);
        __atomic_fetch_add(&h->sum_us, us, __ATOMIC_RELAXED);
    }
}

static uint64_t name_hash(const char *name, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)name[i]) * 1099511628211ull;
    return h;
}

static void rule_count(struct rule_table *t, const char *name)
{
    size_t n = strnlen(name, MX_STATS_RULE_NAME - 1);
    uint64_t h = name_hash(name, n);
    /* linear probing over the whole table: at most MX_STATS_RULES_PER_SLOT steps */
    for (size_t k = 0; k < MX_STATS_RULES_PER_SLOT; k++) {
        struct mx_stats_rule *e = &t->e[(h + k) % MX_STATS_RULES_PER_SLOT];
        uint64_t hits = __atomic_load_n(&e->hits, __ATOMIC_ACQUIRE);
        if (hits == 0) {
            memcpy(e->name, name, n);
            e->name[n] = '\0';
            __atomic_store_n(&e->hits, 1, __ATOMIC_RELEASE);
            return;
        }
        if (strncmp(e->name, name, n) == 0 && e->name[n] == '\0') {
            __atomic_store_n(&e->hits, hits + 1, __ATOMIC_RELAXED);
            return;
        }
    }
    __atomic_store_n(&t->untracked, t->untracked + 1, __ATOMIC_RELAXED);
}

void mx_stats_rule_hit(const char *name)
{
    if (!name || !*name)
        return;
    struct mx_stats_slot *s = mx_stats_tls;
    if (s && g_rules && s >= g_slots && s < g_slots + g_nslots) {
        rule_count(&g_rules[s - g_slots], name);
        return;
    }
    pthread_mutex_lock(&g_rules_lock);
    rule_count(&g_rules_shared, name);
    pthread_mutex_unlock(&g_rules_lock);
}

static int by_name(const void *a, const void *b)
{
    return strcmp(((const struct mx_stats_rule *)a)->name, ((const struct mx_stats_rule *)b)->name);
}

static int by_hits(const void *a, const void *b)
{
    const struct mx_stats_rule *x = a, *y = b;
    if (x->hits != y->hits)
        return x->hits < y->hits ? 1 : -1;
    return strcmp(x->name, y->name);
}

/* Copy one table's non-empty entries to v (room for a whole table). */
static size_t rules_copy(const struct rule_table *t, struct mx_stats_rule *v, uint64_t *untracked)
{
    size_t n = 0;
    for (size_t k = 0; k < MX_STATS_RULES_PER_SLOT; k++) {
        uint64_t hits = __atomic_load_n(&t->e[k].hits, __ATOMIC_ACQUIRE);
        if (hits == 0)
            continue;
        memcpy(v[n].name, t->e[k].name, MX_STATS_RULE_NAME);
        v[n].name[MX_STATS_RULE_NAME - 1] = '\0';
        v[n++].hits = hits;
    }
    *untracked += __atomic_load_n(&t->untracked, __ATOMIC_RELAXED);
    return n;
}

/* The most frequent rules over every slot, summed by name. */
static void top_rules(struct mx_stats_snapshot *snap)
{
    size_t cap = ((size_t)g_nslots + 1) * MX_STATS_RULES_PER_SLOT, n = 0;
    struct mx_stats_rule *v = malloc(cap * sizeof(*v));
    if (!v)
        return;
    for (unsigned i = 0; g_rules && i < g_nslots; i++)
        n += rules_copy(&g_rules[i], v + n, &snap->rules_untracked);
    pthread_mutex_lock(&g_rules_lock);
    n += rules_copy(&g_rules_shared, v + n, &snap->rules_untracked);
    pthread_mutex_unlock(&g_rules_lock);
    qsort(v, n, sizeof(*v), by_name);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (m && strcmp(v[m - 1].name, v[i].name) == 0)
            v[m - 1].hits += v[i].hits;
        else
            v[m++] = v[i];
    }
    qsort(v, m, sizeof(*v), by_hits);
    snap->nrules = m < MX_STATS_TOP_RULES ? (unsigned)m : MX_STATS_TOP_RULES;
    memcpy(snap->top_rules, v, snap->nrules * sizeof(*v));
    free(v);
}

static void add_slot(struct mx_stats_snapshot *snap, const struct mx_stats_slot *s,
                     uint64_t *per)
{
    for (int i = 0; i < MX_STAT__COUNT; i++) {
        uint64_t v = __atomic_load_n(&s->v[i], __ATOMIC_RELAXED);
        snap->total[i] += v;
        if (per)
            per[i] = v;
    }
    for (int h = 0; h < MX_HIST__COUNT; h++) {
        for (int b = 0; b < MX_HIST_BUCKETS; b++)
            snap->hist[h].bucket[b] += __atomic_load_n(&s->h[h].bucket[b], __ATOMIC_RELAXED);
        snap->hist[h].count += __atomic_load_n(&s->h[h].count, __ATOMIC_RELAXED);
        snap->hist[h].sum_us += __atomic_load_n(&s->h[h].sum_us, __ATOMIC_RELAXED);
    }
}

void mx_stats_snapshot(struct mx_stats_snapshot *snap)
{
    memset(snap, 0, sizeof(*snap));
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    snap->time_ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    snap->nslots = g_nslots;
    for (unsigned i = 0; i < g_nslots; i++)
        add_slot(snap, &g_slots[i], snap->per_slot[i]);
    add_slot(snap, &mx_stats_shared, NULL);
    top_rules(snap);
}

double mx_stats_hist_quantile(const struct mx_stats_hist *h, double q)
{
    if (h->count == 0)
        return 0;
    if (q < 0)
        q = 0;
    if (q > 1)
        q = 1;
    double rank = q * (double)h->count;
    uint64_t cum = 0;
    for (unsigned b = 0; b < MX_HIST_BUCKETS; b++) {
        uint64_t n = h->bucket[b];
        if (n == 0)
            continue;
        if ((double)(cum + n) >= rank) {
            double lo = b == 0 ? 0 : (double)(1ull << (b - 1));
            double hi = b == 0 ? 1 : (double)(1ull << b);
            if (b == MX_HIST_BUCKETS - 1)
                hi = lo * 2; /* the overflow bucket: assume one more doubling */
            return lo + (hi - lo) * (rank - (double)cum) / (double)n;
        }
        cum += n;
    }
    return (double)(1ull << (MX_HIST_BUCKETS - 1));
}

/* ---- rendering ------------------------------------------------------------ */

struct out {
    char *p;
    size_t n, cap;
    int err;
};

static void out_printf(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void out_printf(struct out *o, const char *fmt, ...)
{
    if (o->err)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(o->p ? o->p + o->n : NULL, o->p ? o->cap - o->n : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            o->err = 1;
            return;
        }
        if (o->p && o->n + (size_t)n < o->cap) {
            o->n += (size_t)n;
            return;
        }
        size_t nc = o->cap ? o->cap * 2 : 8192;
        while (nc < o->n + (size_t)n + 1)
            nc *= 2;
        char *j = realloc(o->p, nc);
        if (!j) {
            o->err = 1;
            return;
        }
        o->p = j;
        o->cap = nc;
    }
}

static char *out_done(struct out *o)
{
    if (o->err) {
        free(o->p);
        return NULL;
    }
    if (!o->p)
        return strdup("");
    return o->p;
}

static void print_value(struct out *o, enum mx_stat id, uint64_t v)
{
    if (counters[id].kind == 'G')
        out_printf(o, "%" PRId64, (int64_t)v);
    else
        out_printf(o, "%" PRIu64, v);
}

char *mx_stats_render_text(const struct mx_stats_snapshot *s)
{
    struct out o = {0};
    for (int i = 0; i < MX_STAT__COUNT; i++) {
        out_printf(&o, "%s ", mx_stats_key(i));
        print_value(&o, i, s->total[i]);
        out_printf(&o, "\n");
    }
    for (int h = 0; h < MX_HIST__COUNT; h++) {
        const struct mx_stats_hist *x = &s->hist[h];
        out_printf(&o,
                   "%s_us count %" PRIu64 " sum %" PRIu64 " p50 %.0f p90 %.0f p99 %.0f\n",
                   hist_key(h), x->count, x->sum_us, mx_stats_hist_quantile(x, 0.5),
                   mx_stats_hist_quantile(x, 0.9), mx_stats_hist_quantile(x, 0.99));
    }
    for (unsigned w = 0; w < s->nslots && w < MX_STATS_MAX_SLOTS; w++)
        out_printf(&o, "worker %u busy_us %" PRIu64 " loops %" PRIu64 " connections_open %" PRId64
                       "\n",
                   w, s->per_slot[w][MX_STAT_WORKER_BUSY_US], s->per_slot[w][MX_STAT_WORKER_LOOPS],
                   (int64_t)s->per_slot[w][MX_STAT_CONN_OPEN]);
    for (unsigned i = 0; i < s->nrules && i < MX_STATS_TOP_RULES; i++)
        out_printf(&o, "rule %s hits %" PRIu64 "\n", s->top_rules[i].name, s->top_rules[i].hits);
    out_printf(&o, "rules_untracked %" PRIu64 "\n", s->rules_untracked);
    return out_done(&o);
}

static json_t *counters_json(const uint64_t *v)
{
    json_t *o = json_object();
    for (int i = 0; o && i < MX_STAT__COUNT; i++)
        json_object_set_new(o, mx_stats_key(i), json_integer((json_int_t)v[i]));
    return o;
}

char *mx_stats_render_json(const struct mx_stats_snapshot *s)
{
    json_t *root = json_object();
    if (!root)
        return NULL;
    json_object_set_new(root, "time_ms", json_integer((json_int_t)s->time_ms));
    json_object_set_new(root, "slots", json_integer(s->nslots));
    json_object_set_new(root, "counters", counters_json(s->total));
    json_t *per = json_array();
    for (unsigned w = 0; w < s->nslots && w < MX_STATS_MAX_SLOTS; w++)
        json_array_append_new(per, counters_json(s->per_slot[w]));
    json_object_set_new(root, "per_slot", per);
    json_t *hs = json_object();
    for (int h = 0; h < MX_HIST__COUNT; h++) {
        json_t *x = json_object(), *b = json_array();
        for (int k = 0; k < MX_HIST_BUCKETS; k++)
            json_array_append_new(b, json_integer((json_int_t)s->hist[h].bucket[k]));
        json_object_set_new(x, "count", json_integer((json_int_t)s->hist[h].count));
        json_object_set_new(x, "sum_us", json_integer((json_int_t)s->hist[h].sum_us));
        json_object_set_new(x, "p50_us", json_real(mx_stats_hist_quantile(&s->hist[h], 0.5)));
        json_object_set_new(x, "p99_us", json_real(mx_stats_hist_quantile(&s->hist[h], 0.99)));
        json_object_set_new(x, "buckets", b);
        json_object_set_new(hs, hist_key(h), x);
    }
    json_object_set_new(root, "histograms", hs);
    json_t *tr = json_array();
    for (unsigned i = 0; i < s->nrules && i < MX_STATS_TOP_RULES; i++)
        json_array_append_new(tr, json_pack("{s:s, s:I}", "rule", s->top_rules[i].name, "hits",
                                            (json_int_t)s->top_rules[i].hits));
    json_object_set_new(root, "top_rules", tr);
    json_object_set_new(root, "rules_untracked", json_integer((json_int_t)s->rules_untracked));
    char *txt = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!txt)
        return NULL;
    /* a trailing newline for the shell; jansson's buffer is malloc'd */
    size_t n = strlen(txt);
    char *j = realloc(txt, n + 2);
    if (!j) {
        free(txt);
        return NULL;
    }
    j[n] = '\n';
    j[n + 1] = '\0';
    return j;
}

static uint64_t get_u64(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_integer(v) ? (uint64_t)json_integer_value(v) : 0;
}

static void parse_counters(json_t *o, uint64_t *v)
{
    if (!json_is_object(o))
        return;
    for (int i = 0; i < MX_STAT__COUNT; i++)
        v[i] = get_u64(o, mx_stats_key(i));
}

int mx_stats_parse_json(const char *json, size_t len, struct mx_stats_snapshot *out)
{
    memset(out, 0, sizeof(*out));
    json_error_t err;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &err);
    if (!root)
        return -EINVAL;
    if (!json_is_object(root)) {
        json_decref(root);
        return -EINVAL;
    }
    out->time_ms = get_u64(root, "time_ms");
    parse_counters(json_object_get(root, "counters"), out->total);
    json_t *per = json_object_get(root, "per_slot");
    if (json_is_array(per)) {
        size_t n = json_array_size(per);
        if (n > MX_STATS_MAX_SLOTS)
            n = MX_STATS_MAX_SLOTS;
        out->nslots = (unsigned)n;
        for (size_t w = 0; w < n; w++)
            parse_counters(json_array_get(per, w), out->per_slot[w]);
    }
    json_t *hs = json_object_get(root, "histograms");
    for (int h = 0; json_is_object(hs) && h < MX_HIST__COUNT; h++) {
        json_t *x = json_object_get(hs, hist_key(h));
        if (!json_is_object(x))
            continue;
        out->hist[h].count = get_u64(x, "count");
        out->hist[h].sum_us = get_u64(x, "sum_us");
        json_t *b = json_object_get(x, "buckets");
        for (size_t k = 0; json_is_array(b) && k < json_array_size(b) && k < MX_HIST_BUCKETS; k++) {
            json_t *v = json_array_get(b, k);
            out->hist[h].bucket[k] = json_is_integer(v) ? (uint64_t)json_integer_value(v) : 0;
        }
    }
    json_t *tr = json_object_get(root, "top_rules");
    for (size_t i = 0; json_is_array(tr) && i < json_array_size(tr) && out->nrules < MX_STATS_TOP_RULES;
         i++) {
        json_t *x = json_array_get(tr, i);
        const char *name = json_string_value(json_object_get(x, "rule"));
        if (!name || !*name)
            continue;
        struct mx_stats_rule *r = &out->top_rules[out->nrules++];
        snprintf(r->name, sizeof r->name, "%s", name);
        r->hits = get_u64(x, "hits");
    }
    out->rules_untracked = get_u64(root, "rules_untracked");
    json_decref(root);
    return 0;
}

char *mx_stats_render_prometheus(const struct mx_stats_snapshot *s)
{
    struct out o = {0};
    const char *last = "";
    for (int i = 0; i < MX_STAT__COUNT; i++) {
        const struct counter_info *c = &counters[i];
        bool per_worker = i == MX_STAT_WORKER_BUSY_US || i == MX_STAT_WORKER_LOOPS;
        if (strcmp(c->name, last) != 0) {
            out_printf(&o, "# HELP %s %s\n# TYPE %s %s\n", c->name, c->help, c->name,
                       c->kind == 'G' ? "gauge" : "counter");
            last = c->name;
        }
        if (per_worker) {
            for (unsigned w = 0; w < s->nslots && w < MX_STATS_MAX_SLOTS; w++) {
                uint64_t v = s->per_slot[w][i];
                if (i == MX_STAT_WORKER_BUSY_US)
                    out_printf(&o, "%s{worker=\"%u\"} %.6f\n", c->name, w, (double)v / 1e6);
                else
                    out_printf(&o, "%s{worker=\"%u\"} %" PRIu64 "\n", c->name, w, v);
            }
            continue;
        }
        out_printf(&o, "%s%s%s%s ", c->name, c->labels[0] ? "{" : "", c->labels,
                   c->labels[0] ? "}" : "");
        print_value(&o, i, s->total[i]);
        out_printf(&o, "\n");
    }
    for (int h = 0; h < MX_HIST__COUNT; h++) {
        const struct mx_stats_hist *x = &s->hist[h];
        const char *n = hists[h].name;
        out_printf(&o, "# HELP %s %s\n# TYPE %s histogram\n", n, hists[h].help, n);
        uint64_t cum = 0;
        for (int b = 0; b < MX_HIST_BUCKETS - 1; b++) {
            cum += x->bucket[b];
            out_printf(&o, "%s_bucket{le=\"%.6g\"} %" PRIu64 "\n", n, (double)(1ull << b) / 1e6,
                       cum);
        }
        out_printf(&o, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n", n, x->count);
        out_printf(&o, "%s_sum %.6f\n%s_count %" PRIu64 "\n", n, (double)x->sum_us / 1e6, n,
                   x->count);
    }
    out_printf(&o, "# HELP mxgate_rule_hits_total Hits of the %d most frequent scan rules since "
                   "start, by rule\n# TYPE mxgate_rule_hits_total counter\n",
               MX_STATS_TOP_RULES);
    for (unsigned i = 0; i < s->nrules && i < MX_STATS_TOP_RULES; i++) {
        out_printf(&o, "mxgate_rule_hits_total{rule=\"");
        for (const char *p = s->top_rules[i].name; *p; p++) { /* label value escapes */
            if (*p == '\n')
                out_printf(&o, "\\n");
            else
                out_printf(&o, "%s%c", *p == '\\' || *p == '"' ? "\\" : "", *p);
        }
        out_printf(&o, "\"} %" PRIu64 "\n", s->top_rules[i].hits);
    }
    out_printf(&o, "# HELP mxgate_rule_hits_untracked_total Rule hits not counted by name (a "
                   "worker's rule table was full)\n# TYPE mxgate_rule_hits_untracked_total "
                   "counter\nmxgate_rule_hits_untracked_total %" PRIu64 "\n",
               s->rules_untracked);
    return out_done(&o);
}
