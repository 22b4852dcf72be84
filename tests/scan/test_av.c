/*
 * test_av.c - the AV service against a signature database the test writes:
 * EICAR as an .ndb body signature and Debian's clamav-testfiles clam.exe as
 * an .hdb hash signature. Checks infected / clean verdicts on whole mail
 * messages (base64 attachments, the clamav-testfiles mails), reload while
 * scanning, and the fail-safe paths (no signatures, queue full, stopped).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "scan/scan.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char EICAR[] = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
static char dbdir[256];
static bool have_clam_exe;

static int setup(void **state)
{
    (void)state;
    snprintf(dbdir, sizeof dbdir, "/tmp/mx-av-test.%d", (int)getpid());
    mkdir(dbdir, 0700);
    char path[512];
    snprintf(path, sizeof path, "%s/test.ndb", dbdir);
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f, "Eicar-Test-Signature:0:*:");
    for (const char *p = EICAR; *p; p++)
        fprintf(f, "%02x", (unsigned char)*p);
    fprintf(f, "\n");
    fclose(f);
    /* clam.exe by MD5 */
    FILE *x = fopen("/usr/share/clamav-testfiles/clam.exe", "rb");
    if (x) {
        unsigned char buf[65536], md[16];
        unsigned mdl;
        size_t n = fread(buf, 1, sizeof buf, x);
        fclose(x);
        EVP_Digest(buf, n, md, &mdl, EVP_md5(), NULL);
        snprintf(path, sizeof path, "%s/test.hdb", dbdir);
        f = fopen(path, "w");
        for (unsigned i = 0; i < 16; i++)
            fprintf(f, "%02x", md[i]);
        fprintf(f, ":%zu:Clam.Test.Exe\n", n);
        fclose(f);
        have_clam_exe = true;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dbdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Poll a job to completion (bounded: 20 s). */
static enum mx_av_status wait_job(struct mx_av_job *j)
{
    for (int i = 0; i < 20000 && mx_av_job_status(j) == MX_AV_PENDING; i++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    return mx_av_job_status(j);
}

static char *b64(const char *s, size_t n)
{
    char *out = malloc(n * 2 + 8);
    EVP_EncodeBlock((unsigned char *)out, (const unsigned char *)s, (int)n);
    return out;
}

static char *eicar_mail(void)
{
    char *enc = b64(EICAR, strlen(EICAR));
    char *m = malloc(2048);
    snprintf(m, 2048,
             "From: a@example.com\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
             "Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\n"
             "Content-Type: text/plain\r\n\r\nsee attached\r\n--zz\r\n"
             "Content-Type: application/octet-stream; name=\"doc.bin\"\r\n"
             "Content-Transfer-Encoding: base64\r\n\r\n%s\r\n--zz--\r\n",
             enc);
    free(enc);
    return m;
}

static void test_infected_and_clean(void **state)
{
    (void)state;
    struct mx_av_opts o = {.db_dir = dbdir, .threads = 2};
    struct mx_av *av;
    char *err = NULL;
    assert_int_equal(mx_av_start(&o, &av, &err), 0);
    char *mail = eicar_mail();
    struct mx_av_job *j = mx_av_submit(av, (const uint8_t *)mail, strlen(mail));
    assert_int_equal(wait_job(j), MX_AV_INFECTED);
    assert_non_null(strstr(mx_av_job_detail(j), "Eicar-Test-Signature"));
    assert_int_equal(mx_av_job_action(av, j), MX_AV_REJECT);
    mx_av_job_free(j);
    static const char clean[] = "From: a@example.com\r\nSubject: hi\r\n\r\nnothing here\r\n";
    j = mx_av_submit(av, (const uint8_t *)clean, sizeof clean - 1);
    assert_int_equal(wait_job(j), MX_AV_CLEAN);
    assert_int_equal(mx_av_job_action(av, j), MX_AV_ACCEPT);
    mx_av_job_free(j);
    /* clamav-testfiles mails carrying clam.exe (base64, uuencoded) */
    if (have_clam_exe) {
        static const char *const files[] = {"clam.exe.mbox.base64", "clam.exe.mbox.uu", "clam.mail"};
        for (size_t i = 0; i < 3; i++) {
            char path[512];
            snprintf(path, sizeof path, "%s/clamav-testfiles/%s", getenv("SHARED_CORPUS"), files[i]);
            FILE *f = fopen(path, "rb");
            assert_non_null(f);
            static uint8_t buf[1 << 20];
            size_t n = fread(buf, 1, sizeof buf, f);
            fclose(f);
            j = mx_av_submit(av, buf, n);
            assert_int_equal(wait_job(j), MX_AV_INFECTED);
            assert_non_null(strstr(mx_av_job_detail(j), "Clam.Test.Exe"));
            mx_av_job_free(j);
        }
    }
    /* reload: scans keep working across the swap */
    unsigned gen = mx_av_generation(av);
    assert_int_equal(mx_av_reload(av), 0);
    for (int i = 0; i < 50; i++) {
        j = mx_av_submit(av, (const uint8_t *)mail, strlen(mail));
        assert_int_equal(wait_job(j), MX_AV_INFECTED);
        mx_av_job_free(j);
    }
    for (int i = 0; i < 20000 && mx_av_generation(av) == gen; i++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(mx_av_generation(av), gen + 1);
    j = mx_av_submit(av, (const uint8_t *)mail, strlen(mail));
    assert_int_equal(wait_job(j), MX_AV_INFECTED);
    mx_av_job_free(j);
    free(mail);
    mx_av_stop(av);
}

static void test_fail_safe(void **state)
{
    (void)state;
    /* no signatures: start fails, the caller must tempfail */
    struct mx_av_opts o = {.db_dir = "/nonexistent/mx-av"};
    struct mx_av *av;
    char *err = NULL;
    assert_int_equal(mx_av_start(&o, &av, &err), -5);
    assert_non_null(err);
    free(err);
    /* a full ring completes the job at once as an error -> tempfail */
    struct mx_av_opts o2 = {.db_dir = dbdir, .queue_size = 2, .threads = 1};
    assert_int_equal(mx_av_start(&o2, &av, &err), 0);
    static uint8_t big[4 << 20];
    memset(big, 'a', sizeof big);
    struct mx_av_job *jobs[64];
    unsigned errors = 0;
    for (int i = 0; i < 64; i++) {
        jobs[i] = mx_av_submit(av, big, sizeof big);
        if (mx_av_job_status(jobs[i]) == MX_AV_ERROR) {
            errors++;
            assert_int_equal(mx_av_job_action(av, jobs[i]), MX_AV_TEMPFAIL);
            assert_string_equal(mx_av_job_detail(jobs[i]), "AV queue full");
        }
    }
    assert_true(errors > 0);
    /* stop with jobs queued: they end as errors, never as clean */
    mx_av_stop(av);
    for (int i = 0; i < 64; i++) {
        enum mx_av_status st = mx_av_job_status(jobs[i]);
        assert_true(st == MX_AV_ERROR || st == MX_AV_CLEAN);
        mx_av_job_free(jobs[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_infected_and_clean),
        cmocka_unit_test(test_fail_safe),
    };
    return cmocka_run_group_tests_name("av", tests, setup, teardown);
}
