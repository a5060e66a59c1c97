/* pb_port.h on libsodium (POSIX). */
#include "pb_port.h"

#include <sodium.h>

int pb_port_init(void) { return sodium_init() < 0 ? -1 : 0; }

int pb_port_x25519(uint8_t out[32], const uint8_t scalar[32], const uint8_t point[32])
{
    /* libsodium refuses small-order points and an all-zero result with -1. */
    return crypto_scalarmult_curve25519(out, scalar, point) == 0 ? 0 : -1;
}

int pb_port_x25519_base(uint8_t out[32], const uint8_t scalar[32])
{
    return crypto_scalarmult_curve25519_base(out, scalar) == 0 ? 0 : -1;
}

int pb_port_hmac_sha256(uint8_t out[32], const uint8_t *key, size_t key_len, const pb_iov *parts,
                        size_t n_parts)
{
    crypto_auth_hmacsha256_state st;
    size_t i;
    if (crypto_auth_hmacsha256_init(&st, key, key_len) != 0) return -1;
    for (i = 0; i < n_parts; i++) {
        if (parts[i].len && crypto_auth_hmacsha256_update(&st, parts[i].data, parts[i].len) != 0)
            return -1;
    }
    if (crypto_auth_hmacsha256_final(&st, out) != 0) return -1;
    sodium_memzero(&st, sizeof st);
    return 0;
}

int pb_port_aead_decrypt(uint8_t *plain, const uint8_t *ct, size_t ct_len, const uint8_t *aad,
                         size_t aad_len, const uint8_t nonce[12], const uint8_t key[32])
{
    unsigned long long n = 0;
    return crypto_aead_chacha20poly1305_ietf_decrypt(plain, &n, NULL, ct, ct_len, aad, aad_len,
                                                     nonce, key) == 0 ? 0 : -1;
}

void pb_port_wipe(void *p, size_t len) { sodium_memzero(p, len); }
