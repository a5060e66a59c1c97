/*
 * The port layer: the only crypto pbridge.c needs. pb_port_sodium.c implements it on
 * libsodium; an MCU build replaces that one file (mbedTLS, a secure element, ...).
 * Every function returns 0 on success, nonzero on failure.
 */
#ifndef PB_PORT_H
#define PB_PORT_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const uint8_t *data;
    size_t len;
} pb_iov;

int pb_port_init(void);
/* out = X25519(scalar, point). May fail on an all-zero result; pbridge checks that too. */
int pb_port_x25519(uint8_t out[32], const uint8_t scalar[32], const uint8_t point[32]);
int pb_port_x25519_base(uint8_t out[32], const uint8_t scalar[32]);
/* HMAC-SHA256 over the concatenation of parts. */
int pb_port_hmac_sha256(uint8_t out[32], const uint8_t *key, size_t key_len, const pb_iov *parts,
                        size_t n_parts);
/* ChaCha20-Poly1305 (IETF, 12-byte nonce) decrypt; ct_len includes the 16-byte tag. */
int pb_port_aead_decrypt(uint8_t *plain, const uint8_t *ct, size_t ct_len, const uint8_t *aad,
                         size_t aad_len, const uint8_t nonce[12], const uint8_t key[32]);
/* Erase a secret in a way the compiler does not remove. */
void pb_port_wipe(void *p, size_t len);

#endif
