/*
 * pbridge: the device side of provisioning-bridge protocol v1, for constrained devices.
 *
 * C99, no heap, no MQTT library: the caller publishes what this library builds and
 * hands it what arrives. Every buffer is the caller's; the PB_*_MAX macros below are
 * the largest each one ever needs (including the terminating NUL where it is text).
 * Crypto goes through pb_port.h (libsodium on POSIX; replace one file on an MCU).
 *
 * Every function returns PB_OK (0) or one negative pb_err; each failure has its own.
 */
#ifndef PBRIDGE_H
#define PBRIDGE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* -- limits (protocol v1) ------------------------------------------------------------ */
#define PB_PREFIX_MAX_LEN 64     /* topic prefix this library accepts, bytes */
#define PB_CLIENT_ID_MAX_LEN 128 /* [A-Za-z0-9._:-]{1,128} */
#define PB_REQUEST_ID_MAX_LEN 64 /* [A-Za-z0-9._:-]{1,64} */
#define PB_TEXT_MAX_CHARS 64     /* vendor, model, identifier: characters */
#define PB_TEXT_MAX 257          /* ... as UTF-8 bytes + NUL (64 x 4 + 1) */
#define PB_KEY_MAX_LEN 128       /* device key, hex characters (the bridge issues 40) */
#define PB_MESSAGE_MAX 513       /* reply message kept, bytes + NUL (longer is truncated) */
#define PB_CODE_TEXT_MAX 33      /* reply code text + NUL */
#define PB_REPLY_MAX_LEN 4096    /* largest reply payload parsed, bytes */
#define PB_SEALED_CT_MAX (PB_KEY_MAX_LEN + 16) /* ciphertext: key + Poly1305 tag */

/* Buffer sizes a caller allocates. */
#define PB_TOPIC_MAX (PB_PREFIX_MAX_LEN + 10 + PB_CLIENT_ID_MAX_LEN + 1) /* "/activate/" */
#define PB_REQUEST_ID_SIZE 17 /* pb_new_request_id: 16 hex characters + NUL */
#define PB_REQUEST_MAX 1040   /* the largest request pb_build_request writes (1029) + NUL */
#define PB_KEY_SIZE (PB_KEY_MAX_LEN + 1)
#define PB_X25519_BYTES 32
#define PB_SECRET_BYTES 32 /* the device secret (factory, per device) */

/* -- errors ----------------------------------------------------------------------------- */
typedef enum {
    PB_OK = 0,
    PB_E_ARG = -1,            /* a NULL pointer or zero-size buffer */
    PB_E_BUFFER = -2,         /* the caller's buffer is too small */
    PB_E_PREFIX = -3,         /* prefix empty, too long, or holds + # or NUL */
    PB_E_CLIENT_ID = -4,      /* client id breaks [A-Za-z0-9._:-]{1,128} */
    PB_E_REQUEST_ID = -5,     /* request id breaks [A-Za-z0-9._:-]{1,64} */
    PB_E_TEXT = -6,           /* vendor/model/identifier empty, > 64 chars, control char, bad UTF-8 */
    PB_E_RANDOM = -7,         /* the caller's random source failed */
    PB_E_TOO_LARGE = -8,      /* reply larger than PB_REPLY_MAX_LEN */
    PB_E_JSON = -9,           /* reply is not valid JSON (or nested too deep / too many tokens) */
    PB_E_NOT_OBJECT = -10,    /* reply is JSON but not an object */
    PB_E_DUPLICATE = -11,     /* a field appears twice */
    PB_E_FIELD_TYPE = -12,    /* a known field has the wrong JSON type or form */
    PB_E_MISSING = -13,       /* a field the reply needs is absent */
    PB_E_VERSION = -14,       /* "v" is not 1 */
    PB_E_STATUS = -15,        /* status is neither "ok" nor "error" */
    PB_E_FIELD_TOO_LONG = -16,/* a field is longer than its PB_*_MAX */
    PB_E_KEY_AND_SEALED = -17,/* an ok reply holds both or neither of key and sealed_key */
    PB_E_NOT_SEALED = -18,    /* pb_unseal on a reply without sealed_key */
    PB_E_ALG = -19,           /* sealed_key.alg is not the v1 algorithm */
    PB_E_BASE64 = -20,        /* epk/nonce/ciphertext is not base64 of the right length */
    PB_E_LOW_ORDER = -21,     /* the server's ephemeral key is a low-order point */
    PB_E_ZERO_SHARED = -22,   /* the X25519 shared secret is all zeros */
    PB_E_CRYPTO = -23,        /* the port layer failed (X25519 or HMAC) */
    PB_E_AUTH = -24,          /* ciphertext does not open: wrong private key, request id, or altered */
    PB_E_KEY_FORM = -25,      /* the opened (or plain) key is not lowercase hex */
    PB_E_REQUEST_MISMATCH = -26 /* the reply answers another request id */
} pb_err;

const char *pb_strerror(int err);

/* -- reply codes -------------------------------------------------------------------------- */
typedef enum {
    PB_CODE_NONE = 0, /* status ok */
    PB_CODE_MALFORMED,
    PB_CODE_INVALID_IDENTIFIER,
    PB_CODE_UNKNOWN_MODEL,
    PB_CODE_NOT_APPROVED,
    PB_CODE_NOT_CLAIMED,
    PB_CODE_WINDOW_EXPIRED,
    PB_CODE_ALREADY_ACTIVATED,
    PB_CODE_REVOKED,
    PB_CODE_RATE_LIMITED,
    PB_CODE_UNAVAILABLE,
    PB_CODE_SEAL_REQUIRED,
    PB_CODE_CLIENT_ID_RESERVED,
    PB_CODE_OTHER /* a code this library does not know: see code_text */
} pb_code;

pb_code pb_code_from_text(const char *text);
/* 1 when the device should try again later (after retry_after), 0 when a person must act. */
int pb_code_is_transient(pb_code code);

typedef enum { PB_STATUS_OK = 1, PB_STATUS_ERROR = 2 } pb_status;

typedef struct {
    pb_status status;
    pb_code code;
    char code_text[PB_CODE_TEXT_MAX];
    int has_request_id; /* 0: request_id was null (a request too broken to echo) */
    char request_id[PB_REQUEST_ID_MAX_LEN + 1];
    char message[PB_MESSAGE_MAX];
    int message_truncated;
    char vendor[PB_TEXT_MAX];
    char model[PB_TEXT_MAX];
    char identifier[PB_TEXT_MAX]; /* canonical form */
    int has_key;                  /* plaintext delivery */
    char key[PB_KEY_SIZE];
    int sealed; /* sealed delivery: open with pb_unseal */
    uint8_t epk[PB_X25519_BYTES];
    uint8_t nonce[12];
    uint8_t ciphertext[PB_SEALED_CT_MAX];
    size_t ciphertext_len;
    long retry_after; /* seconds; -1 when absent */
} pb_reply;

/* -- topics ------------------------------------------------------------------------------- */
int pb_activate_topic(char *out, size_t cap, const char *prefix, const char *client_id);
int pb_reply_topic(char *out, size_t cap, const char *prefix, const char *client_id);
/* 1 when topic (len bytes, need not be NUL-terminated) is this client's reply topic, else 0. */
int pb_is_reply_topic(const char *topic, size_t len, const char *prefix, const char *client_id);

/* -- request --------------------------------------------------------------------------------- */
/* Fill buf with len random bytes; return 0 on success. Must be a CSPRNG. */
typedef int (*pb_random_fn)(void *ctx, uint8_t *buf, size_t len);

/* A fresh request id: 16 lowercase hex characters from 8 random bytes. */
int pb_new_request_id(char out[PB_REQUEST_ID_SIZE], pb_random_fn rng, void *ctx);
/* A fresh X25519 key pair for sealed delivery (keep private until the key is opened). */
int pb_new_keypair(uint8_t private_key[PB_X25519_BYTES], uint8_t public_key[PB_X25519_BYTES],
                   pb_random_fn rng, void *ctx);

typedef struct {
    const char *client_id;  /* also the MQTT client id */
    const char *request_id; /* keep it: an identical retry reuses it */
    const char *vendor;
    const char *model;
    const char *identifier;
    const uint8_t *public_key;    /* 32 bytes, or NULL for plaintext delivery */
    const uint8_t *device_secret; /* 32 bytes, or NULL: no proof */
} pb_request;

/* Write the request JSON (NUL-terminated) to out; *len gets its length without the NUL. */
int pb_build_request(char *out, size_t cap, size_t *len, const pb_request *request);
/* The proof alone: 64 lowercase hex characters + NUL. */
int pb_device_proof(char out[65], const uint8_t secret[PB_SECRET_BYTES], const char *client_id,
                    const char *request_id);

/* -- reply ------------------------------------------------------------------------------------ */
/* Parse a reply payload. Unknown fields are ignored (a later minor revision may add some). */
int pb_parse_reply(pb_reply *out, const char *payload, size_t len);
/* PB_OK when reply answers request_id (or carries a null request id), else PB_E_REQUEST_MISMATCH. */
int pb_reply_matches(const pb_reply *reply, const char *request_id);
/* Open a sealed reply into key_out (NUL-terminated lowercase hex). */
int pb_unseal(char *key_out, size_t cap, const pb_reply *reply,
              const uint8_t private_key[PB_X25519_BYTES], const char *request_id);
/* Same, from the raw parts (used by pb_unseal; exposed for tests and fuzzing). */
int pb_unseal_raw(char *key_out, size_t cap, const uint8_t private_key[PB_X25519_BYTES],
                  const uint8_t epk[PB_X25519_BYTES], const uint8_t nonce[12],
                  const uint8_t *ciphertext, size_t ciphertext_len, const char *request_id);

#ifdef __cplusplus
}
#endif
#endif
