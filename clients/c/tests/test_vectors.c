/*
 * Unit tests of pbridge over the shared test vectors (schemas/wire/vectors.json) plus
 * hand-made hostile replies. Usage: test_vectors [path/to/vectors.json]
 * Test code may use the heap; the library may not.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pb_port.h"
#include "pbridge.h"

#define JSMN_STATIC
#define JSMN_STRICT
#include <jsmn.h>

static int failures, checks;

#define CHECK(cond, ...)                                                                       \
    do {                                                                                       \
        checks++;                                                                              \
        if (!(cond)) {                                                                         \
            failures++;                                                                        \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                               \
            fprintf(stderr, __VA_ARGS__);                                                      \
            fputc('\n', stderr);                                                               \
        }                                                                                      \
    } while (0)

/* -- a tiny reader for the vectors file ---------------------------------------------------- */
static const char *js;
static jsmntok_t *tok;
static int ntok;

static int skip(int i)
{
    int end = tok[i].end;
    for (i++; i < ntok && tok[i].start < end; i++) {
    }
    return i;
}

static int get(int obj, const char *name)
{
    int k, j;
    size_t n = strlen(name);
    for (k = 0, j = obj + 1; k < tok[obj].size; k++, j = skip(j + 1))
        if ((size_t)(tok[j].end - tok[j].start) == n && memcmp(js + tok[j].start, name, n) == 0)
            return j + 1;
    return -1;
}

static int is_null(int i) { return i < 0 || (tok[i].type == JSMN_PRIMITIVE && js[tok[i].start] == 'n'); }

static void put_utf8(char *out, size_t *o, unsigned long cp)
{
    if (cp < 0x80) out[(*o)++] = (char)cp;
    else if (cp < 0x800) {
        out[(*o)++] = (char)(0xC0 | (cp >> 6));
        out[(*o)++] = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out[(*o)++] = (char)(0xE0 | (cp >> 12));
        out[(*o)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[(*o)++] = (char)(0x80 | (cp & 0x3F));
    } else {
        out[(*o)++] = (char)(0xF0 | (cp >> 18));
        out[(*o)++] = (char)(0x80 | ((cp >> 12) & 0x3F));
        out[(*o)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[(*o)++] = (char)(0x80 | (cp & 0x3F));
    }
}

/* Unescaped string value (heap; caller frees); *len gets its byte length. */
static char *str(int i, size_t *len)
{
    const char *p = js + tok[i].start, *end = js + tok[i].end;
    char *out = malloc((size_t)(end - p) * 4 + 1);
    size_t o = 0;
    while (p < end) {
        if (*p != '\\') {
            out[o++] = *p++;
            continue;
        }
        p++;
        switch (*p) {
        case 'n': out[o++] = '\n'; break;
        case 't': out[o++] = '\t'; break;
        case 'r': out[o++] = '\r'; break;
        case 'b': out[o++] = '\b'; break;
        case 'f': out[o++] = '\f'; break;
        case 'u': {
            unsigned long cp = strtoul((char[]){p[1], p[2], p[3], p[4], 0}, NULL, 16);
            p += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF && p[1] == '\\' && p[2] == 'u') {
                unsigned long lo = strtoul((char[]){p[3], p[4], p[5], p[6], 0}, NULL, 16);
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                p += 6;
            }
            put_utf8(out, &o, cp);
            break;
        }
        default: out[o++] = *p;
        }
        p++;
    }
    out[o] = '\0';
    if (len) *len = o;
    return out;
}

static char *str_of(int obj, const char *name) { return str(get(obj, name), NULL); }

static int b64(const char *s, uint8_t *out, size_t cap)
{
    static const char A[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t n = 0, bits = 0;
    unsigned long acc = 0;
    for (; *s && *s != '='; s++) {
        const char *c = strchr(A, *s);
        acc = (acc << 6) | (unsigned long)(c - A);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (n < cap) out[n] = (uint8_t)(acc >> bits);
            n++;
        }
    }
    return (int)n;
}

static void unhex(const char *s, uint8_t *out)
{
    size_t i;
    for (i = 0; s[2 * i]; i++) out[i] = (uint8_t)strtoul((char[]){s[2 * i], s[2 * i + 1], 0}, NULL, 16);
}

/* -- vector groups ------------------------------------------------------------------------ */
static void test_topics(int arr)
{
    int k, i;
    for (k = 0, i = arr + 1; k < tok[arr].size; k++, i = skip(i)) {
        char *prefix = str_of(i, "prefix"), *cid = str_of(i, "client_id");
        char *act = str_of(i, "activate"), *rep = str_of(i, "reply");
        char t[PB_TOPIC_MAX];
        CHECK(pb_activate_topic(t, sizeof t, prefix, cid) == PB_OK && strcmp(t, act) == 0,
              "activate topic %s", act);
        CHECK(pb_reply_topic(t, sizeof t, prefix, cid) == PB_OK && strcmp(t, rep) == 0,
              "reply topic %s", rep);
        CHECK(pb_is_reply_topic(rep, strlen(rep), prefix, cid) == 1, "is reply %s", rep);
        CHECK(pb_is_reply_topic(act, strlen(act), prefix, cid) == 0, "activate is not reply %s", act);
        CHECK(pb_is_reply_topic(rep, strlen(rep) - 1, prefix, cid) == 0, "cut reply %s", rep);
        CHECK(pb_reply_topic(t, strlen(rep), prefix, cid) == PB_E_BUFFER, "one byte short %s", rep);
        free(prefix), free(cid), free(act), free(rep);
    }
}

/* Requests the builder must refuse: a field value the bridge answers malformed. */
static const char *BUILDER_REFUSES[] = {"vendor_empty", "vendor_too_long", "identifier_control_character",
                                        "identifier_newline", "vendor_del", "model_c1_control",
                                        "request_id_too_long", "request_id_space", NULL};

static int listed(const char *name, const char **list)
{
    for (; *list; list++)
        if (strcmp(name, *list) == 0) return 1;
    return 0;
}

/* Rebuild each request from its fields: valid ones build, invalid field values do not. */
static void test_requests(int arr)
{
    int k, i, built = 0;
    for (k = 0, i = arr + 1; k < tok[arr].size; k++, i = skip(i)) {
        char *name = str_of(i, "name");
        int valid = js[tok[get(i, "valid")].start] == 't';
        size_t plen;
        char *payload = str(get(i, "payload"), &plen);
        /* parse the payload with the test's own reader */
        jsmn_parser p;
        jsmntok_t inner[64];
        const char *save_js = js;
        jsmntok_t *save_tok = tok;
        int save_n = ntok, n, fr, fv, fm, fi, fk;
        jsmn_init(&p);
        n = jsmn_parse(&p, payload, plen, inner, 64);
        if (n > 0 && inner[0].type == JSMN_OBJECT) {
            js = payload, tok = inner, ntok = n;
            fr = get(0, "request_id"), fv = get(0, "vendor"), fm = get(0, "model");
            fi = get(0, "identifier"), fk = get(0, "public_key");
            if (fr > 0 && fv > 0 && fm > 0 && fi > 0 && tok[fr].type == JSMN_STRING &&
                tok[fv].type == JSMN_STRING && tok[fm].type == JSMN_STRING && tok[fi].type == JSMN_STRING) {
                size_t lr, lv, lm, li;
                char *rid = str(fr, &lr), *v = str(fv, &lv), *m = str(fm, &lm), *id = str(fi, &li);
                /* a NUL inside a field cannot reach the builder at all: C strings end there */
                int has_nul = lr != strlen(rid) || lv != strlen(v) || lm != strlen(m) || li != strlen(id);
                uint8_t pk[64];
                char out[PB_REQUEST_MAX];
                size_t len;
                pb_request r = {"device-0001", rid, v, m, id, NULL, NULL};
                int rc;
                if (!is_null(fk) && tok[fk].type == JSMN_STRING) {
                    char *k64 = str(fk, NULL);
                    if (b64(k64, pk, sizeof pk) == 32) r.public_key = pk;
                    free(k64);
                }
                rc = pb_build_request(out, sizeof out, &len, &r);
                if (valid) {
                    CHECK(rc == PB_OK, "valid request %s: builder says %s", name, pb_strerror(rc));
                    CHECK(rc != PB_OK || len == strlen(out), "length %s", name);
                    built++;
                }
                if (listed(name, BUILDER_REFUSES) && !has_nul)
                    CHECK(rc == PB_E_TEXT || rc == PB_E_REQUEST_ID, "invalid request %s built: %s", name,
                          pb_strerror(rc));
                free(rid), free(v), free(m), free(id);
            }
        }
        js = save_js, tok = save_tok, ntok = save_n;
        free(name), free(payload);
    }
    CHECK(built > 3, "rebuilt %d valid requests", built);
}

static void test_replies(int arr)
{
    int k, i;
    for (k = 0, i = arr + 1; k < tok[arr].size; k++, i = skip(i)) {
        char *name = str_of(i, "name"), *status = str_of(i, "status");
        size_t plen;
        char *payload = str(get(i, "payload"), &plen);
        int fc = get(i, "code"), fr = get(i, "retry_after"), fk = get(i, "key");
        int sealed = js[tok[get(i, "sealed")].start] == 't';
        pb_reply r;
        int rc = pb_parse_reply(&r, payload, plen);
        CHECK(rc == PB_OK, "reply %s: %s", name, pb_strerror(rc));
        if (rc == PB_OK) {
            CHECK(r.status == (strcmp(status, "ok") == 0 ? PB_STATUS_OK : PB_STATUS_ERROR), "status %s", name);
            if (!is_null(fc)) {
                char *code = str(fc, NULL);
                CHECK(strcmp(r.code_text, code) == 0, "code text %s", name);
                CHECK(r.code != PB_CODE_OTHER && r.code != PB_CODE_NONE, "code enum %s: %s", name, code);
                CHECK(r.message[0] != '\0', "message %s", name);
                free(code);
            } else {
                CHECK(r.code == PB_CODE_NONE, "no code %s", name);
            }
            CHECK(r.retry_after == (is_null(fr) ? -1 : atol(js + tok[fr].start)), "retry_after %s", name);
            CHECK(r.sealed == sealed, "sealed %s", name);
            if (!is_null(fk) && !sealed) {
                char *key = str(fk, NULL);
                CHECK(r.has_key && strcmp(r.key, key) == 0, "key %s", name);
                free(key);
            }
        }
        free(name), free(status), free(payload);
    }
}

static void test_sealed(int arr)
{
    int k, i;
    for (k = 0, i = arr + 1; k < tok[arr].size; k++, i = skip(i)) {
        char *name = str_of(i, "name"), *priv64 = str_of(i, "device_private"), *pub64 = str_of(i, "device_public");
        char *rid = str_of(i, "request_id"), *key = str_of(i, "key");
        size_t plen;
        char *payload = str(get(i, "payload") > 0 ? get(i, "payload") : get(i, "reply"), &plen);
        uint8_t priv[32], pub[32], mine[32];
        char out[PB_KEY_SIZE];
        pb_reply r;
        int rc;
        CHECK(b64(priv64, priv, 32) == 32 && b64(pub64, pub, 32) == 32, "keys %s", name);
        CHECK(pb_port_x25519_base(mine, priv) == 0 && memcmp(mine, pub, 32) == 0, "public of %s", name);
        rc = pb_parse_reply(&r, payload, plen);
        CHECK(rc == PB_OK && r.sealed, "sealed reply %s: %s", name, pb_strerror(rc));
        rc = pb_unseal(out, sizeof out, &r, priv, rid);
        CHECK(rc == PB_OK && strcmp(out, key) == 0, "unseal %s: %s", name, pb_strerror(rc));
        CHECK(pb_reply_matches(&r, rid) == PB_OK, "matches %s", name);
        CHECK(pb_reply_matches(&r, "other") == PB_E_REQUEST_MISMATCH, "mismatch %s", name);
        /* the request id is the associated data: another one does not open it */
        CHECK(pb_unseal(out, sizeof out, &r, priv, "other-request") == PB_E_AUTH, "aad %s", name);
        CHECK(out[0] == '\0', "nothing written on failure %s", name);
        /* any flipped bit of ciphertext, tag or nonce fails */
        {
            size_t b;
            for (b = 0; b < r.ciphertext_len; b++) {
                pb_reply t = r;
                t.ciphertext[b] ^= 0x01;
                if (pb_unseal(out, sizeof out, &t, priv, rid) != PB_E_AUTH) break;
            }
            CHECK(b == r.ciphertext_len, "flipped ciphertext byte %zu of %s opened", b, name);
            for (b = 0; b < 12; b++) {
                pb_reply t = r;
                t.nonce[b] ^= 0x80;
                if (pb_unseal(out, sizeof out, &t, priv, rid) != PB_E_AUTH) break;
            }
            CHECK(b == 12, "flipped nonce of %s opened", name);
        }
        {
            uint8_t other[32];
            memcpy(other, priv, 32);
            other[5] ^= 1;
            CHECK(pb_unseal(out, sizeof out, &r, other, rid) == PB_E_AUTH, "other private key %s", name);
        }
        CHECK(pb_unseal(out, strlen(key), &r, priv, rid) == PB_E_BUFFER, "small buffer %s", name);
        CHECK(pb_unseal(out, strlen(key) + 1, &r, priv, rid) == PB_OK, "exact buffer %s", name);
        free(name), free(priv64), free(pub64), free(rid), free(key), free(payload);
    }
}

static void test_proofs(int arr)
{
    int k, i;
    for (k = 0, i = arr + 1; k < tok[arr].size; k++, i = skip(i)) {
        char *name = str_of(i, "name"), *sec = str_of(i, "device_secret"), *cid = str_of(i, "client_id");
        char *rid = str_of(i, "request_id"), *proof = str_of(i, "proof"), *ek = str_of(i, "enrollment_key");
        char *ident = str_of(i, "identifier");
        uint8_t secret[32], enrol[32], derived[32];
        char out[65], req[PB_REQUEST_MAX], needle[80];
        pb_iov part;
        pb_request r;
        unhex(sec, secret);
        unhex(ek, enrol);
        /* device_secret = HMAC-SHA256(enrollment key, canonical identifier) */
        part.data = (const uint8_t *)ident;
        part.len = strlen(ident);
        CHECK(pb_port_hmac_sha256(derived, enrol, 32, &part, 1) == 0 && memcmp(derived, secret, 32) == 0,
              "device secret %s", name);
        CHECK(pb_device_proof(out, secret, cid, rid) == PB_OK && strcmp(out, proof) == 0, "proof %s", name);
        r.client_id = cid, r.request_id = rid, r.vendor = "acme", r.model = "lock-9";
        r.identifier = ident, r.public_key = NULL, r.device_secret = secret;
        snprintf(needle, sizeof needle, "\"proof\":\"%s\"", proof);
        CHECK(pb_build_request(req, sizeof req, NULL, &r) == PB_OK && strstr(req, needle), "request proof %s", name);
        free(name), free(sec), free(cid), free(rid), free(proof), free(ek), free(ident);
    }
}

/* -- hand-made hostile replies ----------------------------------------------------------------- */
#define OKHEAD "{\"v\":1,\"request_id\":\"r-1\",\"status\":\"ok\",\"vendor\":\"a\",\"model\":\"b\",\"identifier\":\"c\","
#define SEALED(epk, nonce, ct) \
    OKHEAD "\"sealed_key\":{\"alg\":\"x25519-hkdf-sha256-chacha20poly1305\",\"epk\":\"" epk "\",\"nonce\":\"" nonce "\",\"ciphertext\":\"" ct "\"}}"
#define CT "kXwLXEeOQreRcGUAx/RXr5XLEa3xxI2CobMu2lvvy09LsHfxoVQASb2w/5JPcmyVSU5bKPf/cTE="
#define EPK "TCut6fYWZeSxufBbd+W2/ysappwLRFwqDLGV0uH8qBY="
#define NONCE "ZU4sh9eCDL6xtbVQ"

static const struct {
    const char *payload;
    int rc;
} HOSTILE[] = {
    {"", PB_E_JSON},
    {"nul", PB_E_JSON},
    {"[1,2]", PB_E_NOT_OBJECT},
    {"\"ok\"", PB_E_NOT_OBJECT},
    {"{} {}", PB_E_JSON},
    {"{}x", PB_E_JSON},
    {"{\"v\":1", PB_E_JSON},
    {"{\"v\":1,\"v\":1}", PB_E_DUPLICATE},
    {"{\"v\":tru,\"request_id\":null,\"status\":\"error\"}", PB_E_JSON},
    {"{\"v\":01,\"request_id\":null,\"status\":\"error\"}", PB_E_JSON},
    {"{\"v\":\"1\",\"request_id\":null,\"status\":\"error\"}", PB_E_FIELD_TYPE},
    {"{\"v\":true,\"request_id\":null,\"status\":\"error\"}", PB_E_FIELD_TYPE},
    {"{\"v\":2,\"request_id\":null,\"status\":\"error\"}", PB_E_VERSION},
    {"{\"v\":1.0,\"request_id\":null,\"status\":\"error\"}", PB_E_VERSION},
    {"{\"request_id\":null,\"status\":\"error\"}", PB_E_MISSING},
    {"{\"v\":1,\"request_id\":null,\"status\":\"maybe\",\"code\":\"x\",\"message\":\"m\"}", PB_E_STATUS},
    {"{\"v\":1,\"request_id\":7,\"status\":\"error\",\"code\":\"x\",\"message\":\"m\"}", PB_E_FIELD_TYPE},
    {"{\"v\":1,\"request_id\":\"a b\",\"status\":\"error\",\"code\":\"x\",\"message\":\"m\"}", PB_E_FIELD_TYPE},
    {"{\"v\":1,\"request_id\":null,\"status\":\"error\",\"message\":\"m\"}", PB_E_MISSING},
    {"{\"v\":1,\"request_id\":null,\"status\":\"error\",\"code\":\"x\"}", PB_E_MISSING},
    {"{\"v\":1,\"request_id\":null,\"status\":\"error\",\"code\":\"x\",\"message\":\"\\u0000\"}", PB_E_FIELD_TYPE},
    {"{\"v\":1,\"request_id\":null,\"status\":\"error\",\"code\":\"x\",\"message\":\"\\ud800\"}", PB_E_FIELD_TYPE},
    {"{\"v\":1,\"request_id\":null,\"status\":\"error\",\"code\":\"x\",\"message\":\"\\q\"}", PB_E_JSON},
    {"{\"v\":1,\"request_id\":null,\"status\":\"error\",\"code\":\"x\",\"message\":\"a\nb\"}", PB_E_JSON},
    {"{\"v\":1,\"request_id\":null,\"status\":\"error\",\"code\":\"x\",\"message\":\"m\",\"retry_after\":-1}", PB_E_FIELD_TYPE},
    {"{\"v\":1,\"request_id\":null,\"status\":\"error\",\"code\":\"x\",\"message\":\"m\",\"retry_after\":1.5}", PB_E_FIELD_TYPE},
    {"{\"v\":1,\"request_id\":null,\"status\":\"error\",\"code\":\"x\",\"message\":\"m\",\"retry_after\":\"5\"}", PB_E_FIELD_TYPE},
    {"{\"v\":1,\"request_id\":null,\"status\":\"error\",\"code\":\"x\",\"message\":\"m\",\"retry_after\":99999999999}", PB_E_FIELD_TOO_LONG},
    {"{\"v\":1,\"request_id\":null,\"status\":\"error\",\"code\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\",\"message\":\"m\"}", PB_E_FIELD_TOO_LONG},
    {OKHEAD "\"key\":\"ab\",\"sealed_key\":{}}", PB_E_KEY_AND_SEALED},
    {"{\"v\":1,\"request_id\":\"r-1\",\"status\":\"ok\",\"vendor\":\"a\",\"model\":\"b\",\"identifier\":\"c\"}", PB_E_KEY_AND_SEALED},
    {"{\"v\":1,\"request_id\":\"r-1\",\"status\":\"ok\",\"model\":\"b\",\"identifier\":\"c\",\"key\":\"ab\"}", PB_E_MISSING},
    {OKHEAD "\"key\":\"AB\"}", PB_E_KEY_FORM},
    {OKHEAD "\"key\":\"\"}", PB_E_KEY_FORM},
    {OKHEAD "\"key\":5}", PB_E_FIELD_TYPE},
    {OKHEAD "\"sealed_key\":\"x\"}", PB_E_FIELD_TYPE},
    {OKHEAD "\"sealed_key\":{\"alg\":\"rot13\",\"epk\":\"" EPK "\",\"nonce\":\"" NONCE "\",\"ciphertext\":\"" CT "\"}}", PB_E_ALG},
    {OKHEAD "\"sealed_key\":{\"epk\":\"" EPK "\",\"nonce\":\"" NONCE "\",\"ciphertext\":\"" CT "\"}}", PB_E_MISSING},
    {SEALED("TCut6fYWZeSxufBbd+W2/ysappwLRFwqDLGV0uH8qB=", NONCE, CT), PB_E_BASE64},
    {SEALED("TCut6fYWZeSxufBbd-W2_ysappwLRFwqDLGV0uH8qBY=", NONCE, CT), PB_E_BASE64},
    {SEALED("TCut6fYWZeSxufBbd+W2/ysappwLRFwqDLGV0uH8qBY", NONCE, CT), PB_E_BASE64},
    {SEALED(EPK, "ZU4sh9eCDL6xtbV=", CT), PB_E_BASE64},
    {SEALED(EPK, NONCE, "AAAA"), PB_E_BASE64},
    {SEALED("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", NONCE, CT), PB_E_BASE64},
    {SEALED(EPK, NONCE, CT) "x", PB_E_JSON},
    /* non-canonical base64: the bits under the padding are not zero */
    {SEALED("TCut6fYWZeSxufBbd+W2/ysappwLRFwqDLGV0uH8qBZ=", NONCE, CT), PB_E_BASE64},
    /* more tokens than PB_MAX_TOKENS: refused, never an overflow */
    {"{\"x\":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,"
     "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]}", PB_E_JSON},
    /* deep nesting costs tokens, never recursion */
    {"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]"
     "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]", PB_E_JSON},
    /* an unknown field is ignored, but it must still be valid JSON */
    {"{\"v\":1,\"request_id\":null,\"status\":\"error\",\"code\":\"x\",\"message\":\"m\",\"new\":\"\\x\"}", PB_E_JSON},
    {"{\"v\":1,\"request_id\":null,\"status\":\"error\",\"code\":\"x\",\"message\":\"m\",\"new\":nan}", PB_E_JSON},
    /* ... all of it, past any length a known field would keep */
    {"{\"v\":1,\"request_id\":null,\"status\":\"error\",\"code\":\"x\",\"message\":\"m\",\"new\":\"abcdefghijklmnop\\ud800\"}", PB_E_FIELD_TYPE},
};

static void test_hostile(void)
{
    size_t i;
    pb_reply r;
    for (i = 0; i < sizeof HOSTILE / sizeof HOSTILE[0]; i++) {
        int rc = pb_parse_reply(&r, HOSTILE[i].payload, strlen(HOSTILE[i].payload));
        CHECK(rc == HOSTILE[i].rc, "hostile #%zu %s: got %d (%s), want %d", i, HOSTILE[i].payload, rc,
              pb_strerror(rc), HOSTILE[i].rc);
    }
    {
        static char big[PB_REPLY_MAX_LEN + 2];
        memset(big, ' ', sizeof big - 1);
        big[0] = '{', big[sizeof big - 2] = '}';
        CHECK(pb_parse_reply(&r, big, sizeof big - 1) == PB_E_TOO_LARGE, "too large");
    }
    {   /* a long message is kept truncated at a character boundary */
        static char msg[2200];
        size_t o = (size_t)sprintf(msg, "{\"v\":1,\"request_id\":null,\"status\":\"error\",\"code\":\"zz\",\"message\":\"");
        while (o < 2000) o += (size_t)sprintf(msg + o, "\xc3\xa9");
        sprintf(msg + o, "\"}");
        CHECK(pb_parse_reply(&r, msg, strlen(msg)) == PB_OK && r.message_truncated &&
                  strlen(r.message) < PB_MESSAGE_MAX && strlen(r.message) % 2 == 0,
              "truncated message");
        CHECK(r.code == PB_CODE_OTHER && strcmp(r.code_text, "zz") == 0 && !r.has_request_id, "unknown code");
    }
}

/* Every low-order encoding of the server's ephemeral key is refused before any use. */
static void test_low_order(void)
{
    static const char *points[] = {
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    };
    uint8_t priv[32] = {1, 2, 3}, epk[32], nonce[12] = {0}, ct[56] = {0};
    char out[PB_KEY_SIZE];
    size_t i;
    for (i = 0; i < 7; i++) {
        unhex(points[i], epk);
        CHECK(pb_unseal_raw(out, sizeof out, priv, epk, nonce, ct, sizeof ct, "r-1") == PB_E_LOW_ORDER,
              "low order %s", points[i]);
        epk[31] |= 0x80; /* the top bit is ignored by X25519: same point */
        CHECK(pb_unseal_raw(out, sizeof out, priv, epk, nonce, ct, sizeof ct, "r-1") == PB_E_LOW_ORDER,
              "low order (top bit) %s", points[i]);
    }
}

static int counter_rng(void *ctx, uint8_t *buf, size_t len)
{
    size_t i;
    for (i = 0; i < len; i++) buf[i] = (uint8_t)((*(int *)ctx)++);
    return 0;
}

static int failing_rng(void *ctx, uint8_t *buf, size_t len)
{
    (void)ctx, (void)buf, (void)len;
    return -1;
}

static void test_builder(void)
{
    char out[PB_REQUEST_MAX], rid[PB_REQUEST_ID_SIZE], t[PB_TOPIC_MAX];
    uint8_t priv[32], pub[32];
    int seed = 0;
    pb_request r = {"device-1", "r-1", "acme", "thermo-1", "00:1A:2B:3C:4D:5E", NULL, NULL};
    size_t len;
    CHECK(pb_new_request_id(rid, counter_rng, &seed) == PB_OK && strcmp(rid, "0001020304050607") == 0, "rid %s", rid);
    CHECK(pb_new_request_id(rid, failing_rng, NULL) == PB_E_RANDOM, "failing rng");
    CHECK(pb_new_keypair(priv, pub, failing_rng, NULL) == PB_E_RANDOM, "failing rng keypair");
    CHECK(pb_new_keypair(priv, pub, counter_rng, &seed) == PB_OK, "keypair");
    CHECK(pb_build_request(out, sizeof out, &len, &r) == PB_OK &&
              strcmp(out, "{\"v\":1,\"request_id\":\"r-1\",\"vendor\":\"acme\",\"model\":\"thermo-1\","
                          "\"identifier\":\"00:1A:2B:3C:4D:5E\"}") == 0,
          "plain request %s", out);
    r.vendor = "a\"c\\e";
    CHECK(pb_build_request(out, sizeof out, &len, &r) == PB_OK && strstr(out, "\"vendor\":\"a\\\"c\\\\e\""),
          "escaped %s", out);
    r.vendor = "acme";
    CHECK(pb_build_request(out, sizeof out, &len, &r) == PB_OK, "rebuild");
    CHECK(pb_build_request(out, len, NULL, &r) == PB_E_BUFFER && out[0] == '\0', "request buffer");
    r.public_key = pub;
    CHECK(pb_build_request(out, sizeof out, &len, &r) == PB_OK && strstr(out, "\"public_key\":\""), "sealed");
    r.identifier = "\xc3\x28";
    CHECK(pb_build_request(out, sizeof out, &len, &r) == PB_E_TEXT, "bad utf-8");
    r.identifier = "\xc0\xaf";
    CHECK(pb_build_request(out, sizeof out, &len, &r) == PB_E_TEXT, "overlong utf-8");
    r.identifier = "\xc2\x85";
    CHECK(pb_build_request(out, sizeof out, &len, &r) == PB_E_TEXT, "C1 control");
    r.identifier = "a\x01";
    CHECK(pb_build_request(out, sizeof out, &len, &r) == PB_E_TEXT, "C0 control");
    r.identifier = "a\x7f";
    CHECK(pb_build_request(out, sizeof out, &len, &r) == PB_E_TEXT, "DEL");
    r.identifier = "\xed\xa0\x80";
    CHECK(pb_build_request(out, sizeof out, &len, &r) == PB_E_TEXT, "surrogate");
    r.identifier = "x";
    r.client_id = "dev/1";
    CHECK(pb_build_request(out, sizeof out, &len, &r) == PB_E_CLIENT_ID, "client id slash");
    CHECK(pb_activate_topic(t, sizeof t, "p", "dev/1") == PB_E_CLIENT_ID, "topic client id");
    CHECK(pb_activate_topic(t, sizeof t, "p", "a+") == PB_E_CLIENT_ID, "topic wildcard id");
    CHECK(pb_activate_topic(t, sizeof t, "p/#", "a") == PB_E_PREFIX, "prefix wildcard");
    CHECK(pb_activate_topic(t, sizeof t, "", "a") == PB_E_PREFIX, "empty prefix");
    CHECK(pb_activate_topic(NULL, 5, "p", "a") == PB_E_ARG, "null");
    {   /* the largest request fits PB_REQUEST_MAX */
        static char longest_id[PB_CLIENT_ID_MAX_LEN + 1], rid64[PB_REQUEST_ID_MAX_LEN + 1], text[257];
        uint8_t secret[32] = {0};
        int k;
        memset(longest_id, 'c', PB_CLIENT_ID_MAX_LEN);
        memset(rid64, 'r', PB_REQUEST_ID_MAX_LEN);
        for (k = 0; k < 64; k++) memcpy(text + 4 * k, "\xf0\x9f\x98\x80", 4);
        r.client_id = longest_id, r.request_id = rid64, r.vendor = text, r.model = text, r.identifier = text;
        r.device_secret = secret;
        CHECK(pb_build_request(out, sizeof out, &len, &r) == PB_OK && len == 1029, "largest request %zu", len);
        CHECK(pb_activate_topic(t, sizeof t,
                                "pppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppp", longest_id) == PB_OK,
              "largest topic");
        r.vendor = "\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"";
        CHECK(pb_build_request(out, sizeof out, &len, &r) == PB_OK, "largest escaped request");
    }
    CHECK(pb_code_is_transient(PB_CODE_RATE_LIMITED) && pb_code_is_transient(PB_CODE_UNAVAILABLE) &&
              !pb_code_is_transient(PB_CODE_NOT_APPROVED),
          "transient");
    {
        int e;
        for (e = PB_E_ARG; e >= PB_E_REQUEST_MISMATCH; e--)
            CHECK(strcmp(pb_strerror(e), "unknown error") != 0, "strerror %d", e);
    }
}

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "schemas/wire/vectors.json";
    FILE *f = fopen(path, "rb");
    long size;
    char *buf;
    jsmn_parser p;
    int n, g;
    if (!f) {
        fprintf(stderr, "FAIL cannot open the vectors file %s\n", path);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    size = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t)size + 1);
    if (fread(buf, 1, (size_t)size, f) != (size_t)size) return 1;
    fclose(f);
    buf[size] = '\0';
    if (pb_port_init() != 0) return 1;
    jsmn_init(&p);
    n = jsmn_parse(&p, buf, (size_t)size, NULL, 0);
    tok = calloc((size_t)n, sizeof *tok);
    jsmn_init(&p);
    ntok = jsmn_parse(&p, buf, (size_t)size, tok, (unsigned)n);
    js = buf;
    CHECK(ntok > 0 && tok[0].type == JSMN_OBJECT, "vectors file is a JSON object");
    if (failures) return 1;
    g = get(0, "version");
    CHECK(g > 0 && js[tok[g].start] == '1', "vectors version 1");
    {
        static const char *groups[] = {"topics", "requests", "replies", "sealed", "proofs"};
        void (*fns[])(int) = {test_topics, test_requests, test_replies, test_sealed, test_proofs};
        int k;
        for (k = 0; k < 5; k++) {
            g = get(0, groups[k]);
            CHECK(g > 0 && tok[g].type == JSMN_ARRAY && tok[g].size > 0, "group %s present", groups[k]);
            if (g > 0) fns[k](g);
        }
    }
    test_hostile();
    test_low_order();
    test_builder();
    printf("%d checks, %d failures\n", checks, failures);
    free(buf);
    free(tok);
    return failures ? 1 : 0;
}
