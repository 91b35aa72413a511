/*  upload_hash.c - SHA-256 through OpenSSL's EVP interface.  */
#include <stdlib.h>
#include <openssl/evp.h>

#include "upload_hash.h"

struct upload_hash_t {
    EVP_MD_CTX *ctx;
};

upload_hash_t *upload_hash_new(void)
{
    upload_hash_t *self = malloc(sizeof *self);
    if (!self)
        return NULL;
    self->ctx = EVP_MD_CTX_new();
    if (!self->ctx || EVP_DigestInit_ex(self->ctx, EVP_sha256(), NULL) != 1) {
        upload_hash_destroy(&self);
        return NULL;
    }
    return self;
}

void upload_hash_destroy(upload_hash_t **self_p)
{
    upload_hash_t *self = *self_p;
    if (!self)
        return;
    EVP_MD_CTX_free(self->ctx);
    free(self);
    *self_p = NULL;
}

void upload_hash_update(upload_hash_t *self, const void *data, size_t len)
{
    EVP_DigestUpdate(self->ctx, data, len);
}

int upload_hash_final(upload_hash_t *self, uint8_t out[UPLOAD_HASH_BYTES])
{
    unsigned int n = 0;
    int ok = EVP_DigestFinal_ex(self->ctx, out, &n) == 1 && n == UPLOAD_HASH_BYTES;
    return ok && EVP_DigestInit_ex(self->ctx, EVP_sha256(), NULL) == 1 ? 0 : -1;
}

int upload_hash_once(const void *data, size_t len, uint8_t out[UPLOAD_HASH_BYTES])
{
    unsigned int n = 0;
    return EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) == 1 && n == UPLOAD_HASH_BYTES ? 0
                                                                                             : -1;
}
