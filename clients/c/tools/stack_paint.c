/*
 * Measured stack use of pbridge's heavy calls, port layer (libsodium) included:
 * paint a region below main's frame, call, count the bytes overwritten. x86-64 figures;
 * an upper estimate (the call's own frame and its callees), not a proof.
 * Build: see `make figures`.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "pb_port.h"
#include "pbridge.h"

#define REGION 65536

__attribute__((noinline)) static void paint(void)
{
    volatile uint8_t a[REGION];
    size_t i;
    for (i = 0; i < REGION; i++) a[i] = 0xA5;
}

__attribute__((noinline)) static size_t used(void)
{
    volatile uint8_t a[REGION];
    size_t i = 0;
    while (i < REGION && a[i] == 0xA5) i++;
    return REGION - i;
}

static const char REPLY[] =
    "{\"v\":1,\"request_id\":\"r-1\",\"status\":\"ok\",\"vendor\":\"acme\",\"model\":\"thermo-1\","
    "\"identifier\":\"001A2B3C4D5E\",\"sealed_key\":{\"alg\":\"x25519-hkdf-sha256-chacha20poly1305\","
    "\"epk\":\"TCut6fYWZeSxufBbd+W2/ysappwLRFwqDLGV0uH8qBY=\",\"nonce\":\"ZU4sh9eCDL6xtbVQ\","
    "\"ciphertext\":\"kXwLXEeOQreRcGUAx/RXr5XLEa3xxI2CobMu2lvvy09LsHfxoVQASb2w/5JPcmyVSU5bKPf/cTE=\"}}";

static pb_reply reply; /* static: its 1.7 KB are the caller's, not the call's */

int main(void)
{
    static const uint8_t priv[32] = {1}, secret[32] = {2};
    static char key[PB_KEY_SIZE], req[PB_REQUEST_MAX];
    size_t len, base;
    pb_request r = {"device-0001", "r-1", "acme", "thermo-1", "001A2B3C4D5E", priv, secret};
    if (pb_port_init() != 0) return 1;
    paint();
    base = used();
    paint();
    (void)pb_parse_reply(&reply, REPLY, sizeof REPLY - 1);
    printf("pb_parse_reply    %5zu bytes\n", used() - base);
    paint();
    (void)pb_unseal(key, sizeof key, &reply, priv, "r-1"); /* fails AUTH after all the work */
    printf("pb_unseal         %5zu bytes (libsodium included)\n", used() - base);
    paint();
    (void)pb_build_request(req, sizeof req, &len, &r);
    printf("pb_build_request  %5zu bytes (with proof, libsodium included)\n", used() - base);
    return 0;
}
