/*
 * corpus_files.h - the scan test tools' corpus: every regular file under a
 * folder tree (names starting with '.' left out), read whole into memory, in
 * the order nftw() meets them. Header-only: each tool is one program.
 */
#ifndef MX_TESTS_SCAN_CORPUS_FILES_H
#define MX_TESTS_SCAN_CORPUS_FILES_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>

struct corpus_file {
    char *b;
    size_t n;
};

static struct corpus_file *corpus_files;
static size_t corpus_nfiles;

static int corpus_add_file(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
    (void)sb;
    if (type != FTW_F || path[ftw->base] == '.')
        return 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    struct corpus_file *nf = realloc(corpus_files, (corpus_nfiles + 1) * sizeof *nf);
    if (!nf) {
        fclose(f);
        return -1;
    }
    corpus_files = nf;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    nf[corpus_nfiles].b = malloc(n > 0 ? (size_t)n : 1);
    nf[corpus_nfiles].n = n > 0 && nf[corpus_nfiles].b ? fread(nf[corpus_nfiles].b, 1, (size_t)n, f) : 0;
    fclose(f);
    corpus_nfiles++;
    return 0;
}

/** Add every file under root to corpus_files. Returns 0 or -1. */
static int corpus_files_load(const char *root)
{
    return nftw(root, corpus_add_file, 32, FTW_PHYS) == 0 ? 0 : -1;
}

static void corpus_files_free(void)
{
    for (size_t i = 0; i < corpus_nfiles; i++)
        free(corpus_files[i].b);
    free(corpus_files);
    corpus_files = NULL;
    corpus_nfiles = 0;
}

#endif
