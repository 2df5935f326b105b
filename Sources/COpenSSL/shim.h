// The OpenSSL 3 headers bunq-sessiond uses, plus the few helpers Swift cannot import directly.
// Everything here is `static inline` and prefixed `bsc_` so nothing clashes with OpenSSL's own symbols.
#ifndef BSC_COPENSSL_SHIM_H
#define BSC_COPENSSL_SHIM_H

#include <openssl/bio.h>
#include <openssl/decoder.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

// The subject-name print flags: RFC 2253 escaping and separators, but in certificate order (not reversed, which is
// how bunq reports `certificate_distinguished_name`) and with UTF-8 left as UTF-8 instead of \XX escapes.
// XN_FLAG_RFC2253 is a compound macro Swift does not import.
static const unsigned long bsc_XN_FLAGS_SUBJECT = XN_FLAG_RFC2253 & ~XN_FLAG_DN_REV & ~ASN1_STRFLGS_ESC_MSB;

// OPENSSL_free is a macro that passes __FILE__ and __LINE__ to CRYPTO_free.
static inline void bsc_OPENSSL_free(void *pointer) {
    OPENSSL_free(pointer);
}

#endif
