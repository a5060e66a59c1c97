/*
 * libFuzzer: pb_unseal_raw on attacker-chosen epk, nonce, ciphertext and request id.
 * Input layout: epk[32] nonce[12] rid_len[1] rid[rid_len] ciphertext[rest].
 * It must never crash, never accept a low-order epk, never "open" forged bytes.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "pb_port.h"
#include "pbridge.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint8_t priv[32] = {0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9};
    static int ready;
    char rid[256], key[PB_KEY_SIZE];
    size_t rlen;
    int rc;
    if (!ready) {
        if (pb_port_init() != 0) __builtin_trap();
        ready = 1;
    }
    if (size < 45) return 0;
    rlen = data[44];
    if (size < 45 + rlen) return 0;
    memcpy(rid, data + 45, rlen);
    rid[rlen] = '\0';
    rc = pb_unseal_raw(key, sizeof key, priv, data, data + 32, data + 45 + rlen, size - 45 - rlen, rid);
    /* A random 16-byte Poly1305 tag verifies with probability 2^-128: an "ok" is a bug. */
    if (rc == PB_OK) __builtin_trap();
    if (key[0] != '\0') __builtin_trap(); /* nothing written on failure */
    return 0;
}
