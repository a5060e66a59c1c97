/*
 * libFuzzer: the unsealer on attacker-chosen input, two ways (first byte even / odd):
 *  - forged: epk[32] nonce[12] rid_len[1] rid ciphertext: raw bytes straight to
 *    pb_unseal_raw. Never a crash, never "ok" (a forged Poly1305 tag passes with
 *    probability 2^-128), never a byte written on failure.
 *  - sealed: eph[32] nonce[12] rid_len[1] rid plaintext: the harness seals plaintext
 *    properly (libsodium, the protocol's HKDF) so the tag passes; pb_unseal_raw must then
 *    return exactly the plaintext when it is 1..128 lowercase hex characters and refuse
 *    anything else (PB_E_KEY_FORM, or PB_E_BASE64 for an empty key or a too long one).
 */
#include <sodium.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "pbridge.h"

static const uint8_t DEVICE_PRIV[32] = {0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9};

static int seal(uint8_t *ct, const uint8_t eph[32], uint8_t epk[32], const uint8_t nonce[12],
                const uint8_t *plain, size_t n, const char *rid)
{
    uint8_t pub[32], shared[32], salt[64], prk[32], okm[32], info[27];
    crypto_scalarmult_curve25519_base(pub, DEVICE_PRIV);
    crypto_scalarmult_curve25519_base(epk, eph);
    if (crypto_scalarmult_curve25519(shared, eph, pub) != 0) return -1;
    memcpy(salt, epk, 32);
    memcpy(salt + 32, pub, 32);
    {
        crypto_auth_hmacsha256_state st;
        crypto_auth_hmacsha256_init(&st, salt, 64);
        crypto_auth_hmacsha256_update(&st, shared, 32);
        crypto_auth_hmacsha256_final(&st, prk);
        memcpy(info, "provisioning-bridge/v1 key\x01", 27);
        crypto_auth_hmacsha256_init(&st, prk, 32);
        crypto_auth_hmacsha256_update(&st, info, 27);
        crypto_auth_hmacsha256_final(&st, okm);
    }
    crypto_aead_chacha20poly1305_ietf_encrypt(ct, NULL, plain, n, (const uint8_t *)rid, strlen(rid), NULL,
                                              nonce, okm);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    char rid[256], key[PB_KEY_SIZE];
    size_t rlen, n, i;
    int rc, hex = 1;
    const uint8_t *body;
    if (!ready) {
        if (sodium_init() < 0) __builtin_trap();
        ready = 1;
    }
    if (size < 46) return 0;
    body = data + 1;
    rlen = body[44];
    if (size < 46 + rlen) return 0;
    memcpy(rid, body + 45, rlen);
    rid[rlen] = '\0';
    n = size - 46 - rlen;
    if ((data[0] & 1) == 0) {
        rc = pb_unseal_raw(key, sizeof key, DEVICE_PRIV, body, body + 32, body + 45 + rlen, n, rid);
        if (rc == PB_OK || key[0] != '\0') __builtin_trap();
        return 0;
    }
    {
        uint8_t epk[32], ct[600];
        const uint8_t *plain = body + 45 + rlen;
        if (n > sizeof ct - 16) return 0;
        if (seal(ct, body, epk, body + 32, plain, n, rid) != 0) return 0; /* low-order eph */
        rc = pb_unseal_raw(key, sizeof key, DEVICE_PRIV, epk, body + 32, ct, n + 16, rid);
        for (i = 0; i < n; i++)
            if (!((plain[i] >= '0' && plain[i] <= '9') || (plain[i] >= 'a' && plain[i] <= 'f'))) hex = 0;
        size_t c = strlen(rid); /* a NUL in the bytes ends the C string: both sides see the same */
        if (c == 0 || c > 64 ||
            strspn(rid, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-") != c) {
            if (rc != PB_E_REQUEST_ID) __builtin_trap();
        } else if (n == 0 || n > PB_KEY_MAX_LEN) {
            if (rc != PB_E_BASE64) __builtin_trap();
        } else if (!hex) {
            if (rc != PB_E_KEY_FORM || key[0] != '\0') __builtin_trap();
        } else if (rc != PB_OK || strlen(key) != n || memcmp(key, plain, n) != 0) {
            __builtin_trap();
        }
    }
    return 0;
}
