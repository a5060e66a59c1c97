/* libFuzzer: pb_parse_reply on any bytes must return, never crash, never read out of bounds. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "pbridge.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pb_reply r;
    char key[PB_KEY_SIZE];
    static const uint8_t priv[32] = {7};
    int rc = pb_parse_reply(&r, (const char *)data, size);
    if (rc == PB_OK) {
        /* a parsed reply upholds the struct's promises */
        if (strlen(r.message) >= sizeof r.message || strlen(r.key) >= sizeof r.key) __builtin_trap();
        if (r.status == PB_STATUS_OK && r.has_key == r.sealed) __builtin_trap();
        if (r.sealed) (void)pb_unseal(key, sizeof key, &r, priv, r.has_request_id ? r.request_id : "r-1");
    }
    return 0;
}
