/* pbridge: protocol v1 device side. See include/pbridge.h. No heap, no recursion. */
#include "pbridge.h"

#include <string.h>

#include "pb_port.h"

#define JSMN_STATIC
#define JSMN_STRICT
#include <jsmn.h>

/* JSON tokens a reply may hold: a v1 ok sealed reply has 21; the rest is room for
   fields a later minor revision may add. Each costs 16 bytes of stack (x86-64). */
#ifndef PB_MAX_TOKENS
#define PB_MAX_TOKENS 64
#endif

static const char SEAL_ALG[] = "x25519-hkdf-sha256-chacha20poly1305";
static const char SEAL_INFO[] = "provisioning-bridge/v1 key";
static const char PROOF_LABEL[] = "provisioning-bridge/v1 proof";
static const char HEX[] = "0123456789abcdef";

const char *pb_strerror(int err)
{
    switch (err) {
    case PB_OK: return "ok";
    case PB_E_ARG: return "a required argument is missing";
    case PB_E_BUFFER: return "the output buffer is too small";
    case PB_E_PREFIX: return "the topic prefix is empty, too long, or holds a wildcard";
    case PB_E_CLIENT_ID: return "the client id must be 1 to 128 characters of A-Z a-z 0-9 . _ : -";
    case PB_E_REQUEST_ID: return "the request id must be 1 to 64 characters of A-Z a-z 0-9 . _ : -";
    case PB_E_TEXT: return "vendor, model and identifier must be 1 to 64 printable characters";
    case PB_E_RANDOM: return "the random source failed";
    case PB_E_TOO_LARGE: return "the reply is larger than PB_REPLY_MAX_LEN";
    case PB_E_JSON: return "the reply is not valid JSON";
    case PB_E_NOT_OBJECT: return "the reply is not a JSON object";
    case PB_E_DUPLICATE: return "the reply holds a field twice";
    case PB_E_FIELD_TYPE: return "a reply field has the wrong type or form";
    case PB_E_MISSING: return "the reply lacks a field it needs";
    case PB_E_VERSION: return "the reply is not protocol version 1";
    case PB_E_STATUS: return "the reply status is neither ok nor error";
    case PB_E_FIELD_TOO_LONG: return "a reply field is longer than this library accepts";
    case PB_E_KEY_AND_SEALED: return "an ok reply must hold exactly one of key and sealed_key";
    case PB_E_NOT_SEALED: return "the reply holds no sealed key";
    case PB_E_ALG: return "the sealed key uses an unknown algorithm";
    case PB_E_BASE64: return "a sealed key part is not base64 of the right length";
    case PB_E_LOW_ORDER: return "the server's ephemeral key is a low-order point";
    case PB_E_ZERO_SHARED: return "the X25519 shared secret is all zeros";
    case PB_E_CRYPTO: return "the crypto port failed";
    case PB_E_AUTH: return "the sealed key does not open with this private key and request id";
    case PB_E_KEY_FORM: return "the key is not lowercase hex";
    case PB_E_REQUEST_MISMATCH: return "the reply answers another request";
    default: return "unknown error";
    }
}

/* -- codes -------------------------------------------------------------------------------- */
static const struct {
    const char *text;
    pb_code code;
} CODES[] = {
    {"malformed", PB_CODE_MALFORMED},
    {"invalid_identifier", PB_CODE_INVALID_IDENTIFIER},
    {"unknown_model", PB_CODE_UNKNOWN_MODEL},
    {"not_approved", PB_CODE_NOT_APPROVED},
    {"not_claimed", PB_CODE_NOT_CLAIMED},
    {"window_expired", PB_CODE_WINDOW_EXPIRED},
    {"already_activated", PB_CODE_ALREADY_ACTIVATED},
    {"revoked", PB_CODE_REVOKED},
    {"rate_limited", PB_CODE_RATE_LIMITED},
    {"unavailable", PB_CODE_UNAVAILABLE},
    {"seal_required", PB_CODE_SEAL_REQUIRED},
    {"client_id_reserved", PB_CODE_CLIENT_ID_RESERVED},
};

pb_code pb_code_from_text(const char *text)
{
    size_t i;
    if (!text) return PB_CODE_OTHER;
    for (i = 0; i < sizeof CODES / sizeof CODES[0]; i++)
        if (strcmp(text, CODES[i].text) == 0) return CODES[i].code;
    return PB_CODE_OTHER;
}

int pb_code_is_transient(pb_code code)
{
    return code == PB_CODE_RATE_LIMITED || code == PB_CODE_UNAVAILABLE;
}

/* -- small helpers ---------------------------------------------------------------------------- */
static int id_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '_' || c == ':' || c == '-';
}

static int valid_id(const char *s, size_t max)
{
    size_t n = 0;
    if (!s) return 0;
    for (; s[n]; n++)
        if (n >= max || !id_char((unsigned char)s[n])) return 0;
    return n > 0;
}

static int valid_prefix(const char *s)
{
    size_t n = 0;
    if (!s) return 0;
    for (; s[n]; n++)
        if (n >= PB_PREFIX_MAX_LEN || s[n] == '+' || s[n] == '#') return 0;
    return n > 0;
}

/* Strict UTF-8, 1..64 code points, none of them C0, DEL, C1 or a surrogate. */
static int valid_text(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t chars = 0;
    if (!s) return 0;
    while (*p) {
        unsigned long cp;
        int extra, i;
        if (*p < 0x80) {
            cp = *p;
            extra = 0;
        } else if ((*p & 0xE0) == 0xC0) {
            cp = *p & 0x1F;
            extra = 1;
        } else if ((*p & 0xF0) == 0xE0) {
            cp = *p & 0x0F;
            extra = 2;
        } else if ((*p & 0xF8) == 0xF0) {
            cp = *p & 0x07;
            extra = 3;
        } else {
            return 0;
        }
        for (i = 1; i <= extra; i++) {
            if ((p[i] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (p[i] & 0x3F);
        }
        if ((extra == 1 && cp < 0x80) || (extra == 2 && cp < 0x800) ||
            (extra == 3 && (cp < 0x10000 || cp > 0x10FFFF)))
            return 0; /* overlong or out of range */
        if (cp < 0x20 || (cp >= 0x7F && cp <= 0x9F) || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        p += extra + 1;
        if (++chars > PB_TEXT_MAX_CHARS) return 0;
    }
    return chars > 0;
}

/* A bounded writer: once full it stays failed. */
typedef struct {
    char *out;
    size_t cap, len;
    int full;
} pb_w;

static void w_bytes(pb_w *w, const char *s, size_t n)
{
    if (w->full) return;
    if (n >= w->cap - w->len) { /* keep room for the NUL */
        w->full = 1;
        return;
    }
    memcpy(w->out + w->len, s, n);
    w->len += n;
    w->out[w->len] = '\0';
}

static void w_str(pb_w *w, const char *s) { w_bytes(w, s, strlen(s)); }

static void w_json_string(pb_w *w, const char *s)
{
    w_bytes(w, "\"", 1);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') w_bytes(w, "\\", 1);
        w_bytes(w, s, 1);
    }
    w_bytes(w, "\"", 1);
}

static void w_field(pb_w *w, const char *name, const char *value)
{
    w_bytes(w, ",\"", 2);
    w_str(w, name);
    w_bytes(w, "\":", 2);
    w_json_string(w, value);
}

static void hex_encode(char *out, const uint8_t *in, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        out[2 * i] = HEX[in[i] >> 4];
        out[2 * i + 1] = HEX[in[i] & 15];
    }
    out[2 * n] = '\0';
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void b64_encode(char *out, const uint8_t *in, size_t n)
{
    size_t i, o = 0;
    for (i = 0; i + 2 < n; i += 3) {
        unsigned long v = ((unsigned long)in[i] << 16) | ((unsigned long)in[i + 1] << 8) | in[i + 2];
        out[o++] = B64[(v >> 18) & 63];
        out[o++] = B64[(v >> 12) & 63];
        out[o++] = B64[(v >> 6) & 63];
        out[o++] = B64[v & 63];
    }
    if (n - i == 1) {
        unsigned long v = (unsigned long)in[i] << 16;
        out[o++] = B64[(v >> 18) & 63];
        out[o++] = B64[(v >> 12) & 63];
        out[o++] = '=';
        out[o++] = '=';
    } else if (n - i == 2) {
        unsigned long v = ((unsigned long)in[i] << 16) | ((unsigned long)in[i + 1] << 8);
        out[o++] = B64[(v >> 18) & 63];
        out[o++] = B64[(v >> 12) & 63];
        out[o++] = B64[(v >> 6) & 63];
        out[o++] = '=';
    }
    out[o] = '\0';
}

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Strict standard base64 (padded, canonical) of in[0..n); *out_len gets the decoded size. */
static int b64_decode(uint8_t *out, size_t cap, size_t *out_len, const char *in, size_t n)
{
    size_t i, o = 0, pad = 0;
    if (n == 0 || n % 4 != 0) return -1;
    if (in[n - 1] == '=') pad++;
    if (pad && in[n - 2] == '=') pad++;
    if (n / 4 * 3 - pad > cap) return -1;
    for (i = 0; i < n; i += 4) {
        int v[4], k;
        unsigned long acc;
        for (k = 0; k < 4; k++) {
            if (in[i + (size_t)k] == '=' && i + 4 == n && k >= 4 - (int)pad) {
                v[k] = 0;
            } else {
                v[k] = b64_value((unsigned char)in[i + (size_t)k]);
                if (v[k] < 0) return -1;
            }
        }
        acc = ((unsigned long)v[0] << 18) | ((unsigned long)v[1] << 12) | ((unsigned long)v[2] << 6) |
              (unsigned long)v[3];
        out[o++] = (uint8_t)(acc >> 16);
        if (i + 4 < n || pad < 2) out[o++] = (uint8_t)(acc >> 8);
        else if (acc & 0xFFFF) return -1; /* non-canonical trailing bits */
        if (i + 4 < n || pad < 1) out[o++] = (uint8_t)acc;
        else if (pad == 1 && (acc & 0xFF)) return -1;
    }
    *out_len = o;
    return 0;
}

/* -- topics ----------------------------------------------------------------------------------- */
static int topic(char *out, size_t cap, const char *prefix, const char *kind, const char *client_id)
{
    pb_w w;
    if (!out || cap == 0) return PB_E_ARG;
    out[0] = '\0';
    if (!valid_prefix(prefix)) return PB_E_PREFIX;
    if (!valid_id(client_id, PB_CLIENT_ID_MAX_LEN)) return PB_E_CLIENT_ID;
    w.out = out;
    w.cap = cap;
    w.len = 0;
    w.full = 0;
    w_str(&w, prefix);
    w_str(&w, kind);
    w_str(&w, client_id);
    if (w.full) {
        out[0] = '\0';
        return PB_E_BUFFER;
    }
    return PB_OK;
}

int pb_activate_topic(char *out, size_t cap, const char *prefix, const char *client_id)
{
    return topic(out, cap, prefix, "/activate/", client_id);
}

int pb_reply_topic(char *out, size_t cap, const char *prefix, const char *client_id)
{
    return topic(out, cap, prefix, "/reply/", client_id);
}

int pb_is_reply_topic(const char *t, size_t len, const char *prefix, const char *client_id)
{
    size_t p, c;
    if (!t || !valid_prefix(prefix) || !valid_id(client_id, PB_CLIENT_ID_MAX_LEN)) return 0;
    p = strlen(prefix);
    c = strlen(client_id);
    if (len != p + 7 + c) return 0;
    return memcmp(t, prefix, p) == 0 && memcmp(t + p, "/reply/", 7) == 0 &&
           memcmp(t + p + 7, client_id, c) == 0;
}

/* -- request ---------------------------------------------------------------------------------- */
int pb_new_request_id(char out[PB_REQUEST_ID_SIZE], pb_random_fn rng, void *ctx)
{
    uint8_t raw[8];
    if (!out || !rng) return PB_E_ARG;
    out[0] = '\0';
    if (rng(ctx, raw, sizeof raw) != 0) return PB_E_RANDOM;
    hex_encode(out, raw, sizeof raw);
    return PB_OK;
}

int pb_new_keypair(uint8_t private_key[PB_X25519_BYTES], uint8_t public_key[PB_X25519_BYTES],
                   pb_random_fn rng, void *ctx)
{
    if (!private_key || !public_key || !rng) return PB_E_ARG;
    if (rng(ctx, private_key, PB_X25519_BYTES) != 0) return PB_E_RANDOM;
    if (pb_port_x25519_base(public_key, private_key) != 0) {
        pb_port_wipe(private_key, PB_X25519_BYTES);
        return PB_E_CRYPTO;
    }
    return PB_OK;
}

int pb_device_proof(char out[65], const uint8_t secret[PB_SECRET_BYTES], const char *client_id,
                    const char *request_id)
{
    static const uint8_t zero = 0;
    uint8_t mac[32];
    pb_iov parts[5];
    if (!out || !secret) return PB_E_ARG;
    out[0] = '\0';
    if (!valid_id(client_id, PB_CLIENT_ID_MAX_LEN)) return PB_E_CLIENT_ID;
    if (!valid_id(request_id, PB_REQUEST_ID_MAX_LEN)) return PB_E_REQUEST_ID;
    parts[0].data = (const uint8_t *)PROOF_LABEL;
    parts[0].len = sizeof PROOF_LABEL - 1;
    parts[1].data = &zero;
    parts[1].len = 1;
    parts[2].data = (const uint8_t *)client_id;
    parts[2].len = strlen(client_id);
    parts[3].data = &zero;
    parts[3].len = 1;
    parts[4].data = (const uint8_t *)request_id;
    parts[4].len = strlen(request_id);
    if (pb_port_hmac_sha256(mac, secret, PB_SECRET_BYTES, parts, 5) != 0) return PB_E_CRYPTO;
    hex_encode(out, mac, sizeof mac);
    pb_port_wipe(mac, sizeof mac);
    return PB_OK;
}

int pb_build_request(char *out, size_t cap, size_t *len, const pb_request *r)
{
    pb_w w;
    char b64[45];
    char proof[65];
    int rc;
    if (!out || cap == 0 || !r) return PB_E_ARG;
    out[0] = '\0';
    if (len) *len = 0;
    if (!valid_id(r->client_id, PB_CLIENT_ID_MAX_LEN)) return PB_E_CLIENT_ID;
    if (!valid_id(r->request_id, PB_REQUEST_ID_MAX_LEN)) return PB_E_REQUEST_ID;
    if (!valid_text(r->vendor) || !valid_text(r->model) || !valid_text(r->identifier))
        return PB_E_TEXT;
    w.out = out;
    w.cap = cap;
    w.len = 0;
    w.full = 0;
    w_str(&w, "{\"v\":1");
    w_field(&w, "request_id", r->request_id);
    w_field(&w, "vendor", r->vendor);
    w_field(&w, "model", r->model);
    w_field(&w, "identifier", r->identifier);
    if (r->public_key) {
        b64_encode(b64, r->public_key, PB_X25519_BYTES);
        w_field(&w, "public_key", b64);
    }
    if (r->device_secret) {
        rc = pb_device_proof(proof, r->device_secret, r->client_id, r->request_id);
        if (rc != PB_OK) {
            out[0] = '\0';
            return rc;
        }
        w_field(&w, "proof", proof);
    }
    w_str(&w, "}");
    if (w.full) {
        out[0] = '\0';
        return PB_E_BUFFER;
    }
    if (len) *len = w.len;
    return PB_OK;
}

/* -- reply ------------------------------------------------------------------------------------ */
typedef struct {
    const char *js;
    jsmntok_t *t;
    int n;
} pb_doc;

/* Index of the token after the value at i (and everything nested in it). */
static int skip(const pb_doc *d, int i)
{
    int end = d->t[i].end;
    for (i++; i < d->n && d->t[i].start < end; i++) {
    }
    return i;
}

static int tok_eq(const pb_doc *d, int i, const char *s)
{
    size_t n = strlen(s);
    return d->t[i].type == JSMN_STRING && (size_t)(d->t[i].end - d->t[i].start) == n &&
           memcmp(d->js + d->t[i].start, s, n) == 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int hex4(const char *p, const char *end, unsigned long *v)
{
    int k;
    *v = 0;
    if (end - p < 4) return -1;
    for (k = 0; k < 4; k++) {
        int h = hexval(p[k]);
        if (h < 0) return -1;
        *v = (*v << 4) | (unsigned long)h;
    }
    return 0;
}

/*
 * Unescape the JSON string token i into out (NUL-terminated). With truncate, a string
 * too long is cut at a character boundary and *truncated set; else PB_E_FIELD_TOO_LONG.
 * With out NULL, only check that the whole string is well formed.
 */
static int get_string(const pb_doc *d, int i, char *out, size_t cap, int truncate, int *truncated)
{
    const char *p = d->js + d->t[i].start, *end = d->js + d->t[i].end;
    size_t o = 0;
    if (d->t[i].type != JSMN_STRING) return PB_E_FIELD_TYPE;
    if (truncated) *truncated = 0;
    while (p < end) {
        char buf[4];
        size_t n = 0;
        unsigned char c = (unsigned char)*p;
        if (c < 0x20) return PB_E_JSON; /* raw control character: not JSON */
        if (c != '\\') {
            buf[n++] = (char)c;
            p++;
        } else {
            unsigned long cp;
            if (end - p < 2) return PB_E_JSON;
            switch (p[1]) {
            case '"': buf[n++] = '"'; break;
            case '\\': buf[n++] = '\\'; break;
            case '/': buf[n++] = '/'; break;
            case 'b': buf[n++] = '\b'; break;
            case 'f': buf[n++] = '\f'; break;
            case 'n': buf[n++] = '\n'; break;
            case 'r': buf[n++] = '\r'; break;
            case 't': buf[n++] = '\t'; break;
            case 'u':
                if (hex4(p + 2, end, &cp) != 0) return PB_E_JSON;
                p += 4;
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    unsigned long lo;
                    if (end - p < 8 || p[2] != '\\' || p[3] != 'u' || hex4(p + 4, end, &lo) != 0 ||
                        lo < 0xDC00 || lo > 0xDFFF)
                        return PB_E_FIELD_TYPE; /* lone surrogate */
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    p += 6;
                } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                    return PB_E_FIELD_TYPE;
                }
                if (cp == 0) return PB_E_FIELD_TYPE; /* NUL has no place in a C string */
                if (cp < 0x80) {
                    buf[n++] = (char)cp;
                } else if (cp < 0x800) {
                    buf[n++] = (char)(0xC0 | (cp >> 6));
                    buf[n++] = (char)(0x80 | (cp & 0x3F));
                } else if (cp < 0x10000) {
                    buf[n++] = (char)(0xE0 | (cp >> 12));
                    buf[n++] = (char)(0x80 | ((cp >> 6) & 0x3F));
                    buf[n++] = (char)(0x80 | (cp & 0x3F));
                } else {
                    buf[n++] = (char)(0xF0 | (cp >> 18));
                    buf[n++] = (char)(0x80 | ((cp >> 12) & 0x3F));
                    buf[n++] = (char)(0x80 | ((cp >> 6) & 0x3F));
                    buf[n++] = (char)(0x80 | (cp & 0x3F));
                }
                break;
            default: return PB_E_JSON;
            }
            p += 2;
        }
        if (!out) { /* validation only: the whole string, no limit */
            o += n;
            continue;
        }
        if (o + n >= cap) {
            if (!truncate) return PB_E_FIELD_TOO_LONG;
            /* cut back to the start of a UTF-8 character */
            while (o > 0 && (((unsigned char)out[o]) & 0xC0) == 0x80) o--;
            out[o] = '\0';
            *truncated = 1;
            return PB_OK;
        }
        memcpy(out + o, buf, n);
        o += n;
    }
    if (out) out[o] = '\0';
    return PB_OK;
}

/* The raw token text must be a JSON literal or number (jsmn checks only the first byte). */
static int valid_primitive(const char *s, int n)
{
    int i = 0;
    if ((n == 4 && memcmp(s, "true", 4) == 0) || (n == 5 && memcmp(s, "false", 5) == 0) ||
        (n == 4 && memcmp(s, "null", 4) == 0))
        return 1;
    if (i < n && s[i] == '-') i++;
    if (i >= n) return 0;
    if (s[i] == '0') i++;
    else if (s[i] >= '1' && s[i] <= '9')
        while (i < n && s[i] >= '0' && s[i] <= '9') i++;
    else
        return 0;
    if (i < n && s[i] == '.') {
        int digits = 0;
        for (i++; i < n && s[i] >= '0' && s[i] <= '9'; i++) digits++;
        if (!digits) return 0;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        int digits = 0;
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-')) i++;
        for (; i < n && s[i] >= '0' && s[i] <= '9'; i++) digits++;
        if (!digits) return 0;
    }
    return i == n;
}

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* Check the object at i: keys are strings with one value each, no key twice. */
static int check_object(const pb_doc *d, int i)
{
    int k, j, a, b;
    if (d->t[i].type != JSMN_OBJECT) return PB_E_FIELD_TYPE;
    for (k = 0, j = i + 1; k < d->t[i].size; k++) {
        if (j >= d->n || d->t[j].type != JSMN_STRING || d->t[j].size != 1 || j + 1 >= d->n)
            return PB_E_JSON;
        j = skip(d, j + 1);
    }
    /* duplicates: quadratic, but a reply has a handful of fields */
    for (a = i + 1, k = 0; k < d->t[i].size; k++, a = skip(d, a + 1)) {
        for (b = skip(d, a + 1), j = k + 1; j < d->t[i].size; j++, b = skip(d, b + 1)) {
            int la = d->t[a].end - d->t[a].start, lb = d->t[b].end - d->t[b].start;
            if (la == lb && memcmp(d->js + d->t[a].start, d->js + d->t[b].start, (size_t)la) == 0)
                return PB_E_DUPLICATE;
        }
    }
    return PB_OK;
}

/* Value token of field name in the object at i, or -1. */
static int field(const pb_doc *d, int i, const char *name)
{
    int k, j;
    for (k = 0, j = i + 1; k < d->t[i].size; k++, j = skip(d, j + 1))
        if (tok_eq(d, j, name)) return j + 1;
    return -1;
}

static int is_null(const pb_doc *d, int i)
{
    return d->t[i].type == JSMN_PRIMITIVE && d->t[i].end - d->t[i].start == 4 &&
           memcmp(d->js + d->t[i].start, "null", 4) == 0;
}

static int lower_hex(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++)
        if (!((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'f'))) return 0;
    return n > 0;
}

static int get_b64(const pb_doc *d, int obj, const char *name, uint8_t *out, size_t cap,
                   size_t *out_len, size_t min_len)
{
    int i = field(d, obj, name);
    size_t n;
    if (i < 0) return PB_E_MISSING;
    if (d->t[i].type != JSMN_STRING) return PB_E_FIELD_TYPE;
    /* base64 has no escapes; an escaped string is not one */
    if (b64_decode(out, cap, &n, d->js + d->t[i].start, (size_t)(d->t[i].end - d->t[i].start)) != 0 ||
        n < min_len)
        return PB_E_BASE64;
    *out_len = n;
    return PB_OK;
}

static int parse_sealed(pb_reply *r, const pb_doc *d, int obj)
{
    char alg[sizeof SEAL_ALG];
    size_t n;
    int i, rc;
    if (d->t[obj].type != JSMN_OBJECT) return PB_E_FIELD_TYPE;
    if ((rc = check_object(d, obj)) != PB_OK) return rc;
    i = field(d, obj, "alg");
    if (i < 0) return PB_E_MISSING;
    rc = get_string(d, i, alg, sizeof alg, 0, NULL);
    if (rc == PB_E_FIELD_TOO_LONG || (rc == PB_OK && strcmp(alg, SEAL_ALG) != 0)) return PB_E_ALG;
    if (rc != PB_OK) return rc;
    if ((rc = get_b64(d, obj, "epk", r->epk, sizeof r->epk, &n, sizeof r->epk)) != PB_OK) return rc;
    if ((rc = get_b64(d, obj, "nonce", r->nonce, sizeof r->nonce, &n, sizeof r->nonce)) != PB_OK)
        return rc;
    if ((rc = get_b64(d, obj, "ciphertext", r->ciphertext, sizeof r->ciphertext, &r->ciphertext_len,
                      17)) != PB_OK)
        return rc;
    r->sealed = 1;
    return PB_OK;
}

static int parse_text_field(const pb_doc *d, const char *name, char *out, size_t cap)
{
    int i = field(d, 0, name);
    if (i < 0) return PB_E_MISSING;
    return get_string(d, i, out, cap, 0, NULL);
}

int pb_parse_reply(pb_reply *r, const char *js, size_t len)
{
    jsmn_parser parser;
    jsmntok_t toks[PB_MAX_TOKENS];
    pb_doc d;
    int i, rc, n;
    size_t k;
    if (!r || !js) return PB_E_ARG;
    memset(r, 0, sizeof *r);
    r->retry_after = -1;
    if (len > PB_REPLY_MAX_LEN) return PB_E_TOO_LARGE;
    jsmn_init(&parser);
    n = jsmn_parse(&parser, js, len, toks, PB_MAX_TOKENS);
    if (n < 1) return PB_E_JSON;
    d.js = js;
    d.t = toks;
    d.n = n;
    for (i = 0; i < n; i++) {
        if (toks[i].start < 0 || toks[i].end < 0) return PB_E_JSON;
        if (toks[i].type == JSMN_PRIMITIVE &&
            !valid_primitive(js + toks[i].start, toks[i].end - toks[i].start))
            return PB_E_JSON;
        if (toks[i].type == JSMN_UNDEFINED) return PB_E_JSON;
    }
    /* exactly one JSON value, then only white space */
    for (k = (size_t)toks[0].end + (toks[0].type == JSMN_STRING); k < len; k++)
        if (!is_ws(js[k])) return PB_E_JSON;
    if (skip(&d, 0) != n) return PB_E_JSON;
    if (toks[0].type != JSMN_OBJECT) return PB_E_NOT_OBJECT;
    if ((rc = check_object(&d, 0)) != PB_OK) return rc;
    /* every string in the document must be well formed, known field or not */
    for (i = 0; i < n; i++) {
        if (toks[i].type == JSMN_STRING && (rc = get_string(&d, i, NULL, 0, 0, NULL)) != PB_OK)
            return rc;
    }

    i = field(&d, 0, "v");
    if (i < 0) return PB_E_MISSING;
    if (toks[i].type != JSMN_PRIMITIVE || is_null(&d, i) || js[toks[i].start] == 't' ||
        js[toks[i].start] == 'f')
        return PB_E_FIELD_TYPE;
    if (toks[i].end - toks[i].start != 1 || js[toks[i].start] != '1') return PB_E_VERSION;

    i = field(&d, 0, "request_id");
    if (i < 0) return PB_E_MISSING;
    if (!is_null(&d, i)) {
        rc = get_string(&d, i, r->request_id, sizeof r->request_id, 0, NULL);
        if (rc == PB_E_FIELD_TOO_LONG) return rc;
        if (rc != PB_OK || !valid_id(r->request_id, PB_REQUEST_ID_MAX_LEN)) return PB_E_FIELD_TYPE;
        r->has_request_id = 1;
    }

    i = field(&d, 0, "status");
    if (i < 0) return PB_E_MISSING;
    if (toks[i].type != JSMN_STRING) return PB_E_FIELD_TYPE;
    if (tok_eq(&d, i, "ok")) r->status = PB_STATUS_OK;
    else if (tok_eq(&d, i, "error")) r->status = PB_STATUS_ERROR;
    else return PB_E_STATUS;

    if (r->status == PB_STATUS_ERROR) {
        i = field(&d, 0, "code");
        if (i < 0) return PB_E_MISSING;
        if ((rc = get_string(&d, i, r->code_text, sizeof r->code_text, 0, NULL)) != PB_OK) return rc;
        if (r->code_text[0] == '\0') return PB_E_FIELD_TYPE;
        r->code = pb_code_from_text(r->code_text);
        i = field(&d, 0, "message");
        if (i < 0) return PB_E_MISSING;
        if ((rc = get_string(&d, i, r->message, sizeof r->message, 1, &r->message_truncated)) != PB_OK)
            return rc;
        i = field(&d, 0, "retry_after");
        if (i >= 0 && !is_null(&d, i)) {
            const char *s = js + toks[i].start;
            int m = toks[i].end - toks[i].start, q;
            long v = 0;
            if (toks[i].type != JSMN_PRIMITIVE || m < 1 || s[0] < '0' || s[0] > '9')
                return PB_E_FIELD_TYPE;
            if (m > 9) return PB_E_FIELD_TOO_LONG;
            for (q = 0; q < m; q++) {
                if (s[q] < '0' || s[q] > '9') return PB_E_FIELD_TYPE; /* 1.5, 1e3 */
                v = v * 10 + (s[q] - '0');
            }
            r->retry_after = v;
        }
        return PB_OK;
    }

    r->code = PB_CODE_NONE;
    if ((rc = parse_text_field(&d, "vendor", r->vendor, sizeof r->vendor)) != PB_OK) return rc;
    if ((rc = parse_text_field(&d, "model", r->model, sizeof r->model)) != PB_OK) return rc;
    if ((rc = parse_text_field(&d, "identifier", r->identifier, sizeof r->identifier)) != PB_OK)
        return rc;
    {
        int key = field(&d, 0, "key"), sealed = field(&d, 0, "sealed_key");
        if (key >= 0 && is_null(&d, key)) key = -1;
        if (sealed >= 0 && is_null(&d, sealed)) sealed = -1;
        if ((key >= 0) == (sealed >= 0)) return PB_E_KEY_AND_SEALED;
        if (key >= 0) {
            if ((rc = get_string(&d, key, r->key, sizeof r->key, 0, NULL)) != PB_OK) return rc;
            if (!lower_hex(r->key)) return PB_E_KEY_FORM;
            r->has_key = 1;
            return PB_OK;
        }
        return parse_sealed(r, &d, sealed);
    }
}

int pb_reply_matches(const pb_reply *r, const char *request_id)
{
    if (!r || !request_id) return PB_E_ARG;
    if (!r->has_request_id) return PB_OK;
    return strcmp(r->request_id, request_id) == 0 ? PB_OK : PB_E_REQUEST_MISMATCH;
}

/* -- unsealing ------------------------------------------------------------------------------- */
/* The X25519 points of small order (and their non-canonical encodings), top bit ignored. */
static const uint8_t LOW_ORDER[7][32] = {
    {0},
    {1},
    {0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4, 0x6a,
     0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49, 0xb8, 0x00},
    {0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef, 0x5b,
     0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f, 0x11, 0x57},
    {0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
     0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
    {0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
     0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
    {0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
     0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
};

static int low_order(const uint8_t p[32])
{
    int i, j;
    for (i = 0; i < 7; i++) {
        uint8_t diff = (uint8_t)((p[31] & 0x7f) ^ LOW_ORDER[i][31]);
        for (j = 0; j < 31; j++) diff |= (uint8_t)(p[j] ^ LOW_ORDER[i][j]);
        if (diff == 0) return 1;
    }
    return 0;
}

int pb_unseal_raw(char *key_out, size_t cap, const uint8_t priv[PB_X25519_BYTES],
                  const uint8_t epk[PB_X25519_BYTES], const uint8_t nonce[12],
                  const uint8_t *ct, size_t ct_len, const char *request_id)
{
    uint8_t shared[32], pub[32], prk[32], okm[32], salt[64], plain[PB_SEALED_CT_MAX];
    uint8_t acc = 0;
    static const uint8_t one = 1;
    pb_iov parts[2];
    size_t i, n;
    int rc = PB_OK;
    if (!key_out || cap == 0 || !priv || !epk || !nonce || !ct || !request_id) return PB_E_ARG;
    key_out[0] = '\0';
    if (!valid_id(request_id, PB_REQUEST_ID_MAX_LEN)) return PB_E_REQUEST_ID;
    if (ct_len < 17 || ct_len > PB_SEALED_CT_MAX) return PB_E_BASE64;
    n = ct_len - 16;
    if (cap < n + 1) return PB_E_BUFFER;
    if (low_order(epk)) return PB_E_LOW_ORDER;
    if (pb_port_x25519(shared, priv, epk) != 0) {
        rc = PB_E_CRYPTO;
        goto out;
    }
    for (i = 0; i < 32; i++) acc |= shared[i];
    if (acc == 0) {
        rc = PB_E_ZERO_SHARED;
        goto out;
    }
    if (pb_port_x25519_base(pub, priv) != 0) {
        rc = PB_E_CRYPTO;
        goto out;
    }
    /* HKDF-SHA256 (RFC 5869), one block: salt = epk || device public. */
    memcpy(salt, epk, 32);
    memcpy(salt + 32, pub, 32);
    parts[0].data = shared;
    parts[0].len = 32;
    if (pb_port_hmac_sha256(prk, salt, sizeof salt, parts, 1) != 0) {
        rc = PB_E_CRYPTO;
        goto out;
    }
    parts[0].data = (const uint8_t *)SEAL_INFO;
    parts[0].len = sizeof SEAL_INFO - 1;
    parts[1].data = &one;
    parts[1].len = 1;
    if (pb_port_hmac_sha256(okm, prk, sizeof prk, parts, 2) != 0) {
        rc = PB_E_CRYPTO;
        goto out;
    }
    if (pb_port_aead_decrypt(plain, ct, ct_len, (const uint8_t *)request_id, strlen(request_id),
                             nonce, okm) != 0) {
        rc = PB_E_AUTH;
        goto out;
    }
    for (i = 0; i < n; i++)
        if (!((plain[i] >= '0' && plain[i] <= '9') || (plain[i] >= 'a' && plain[i] <= 'f'))) {
            rc = PB_E_KEY_FORM;
            goto out;
        }
    memcpy(key_out, plain, n);
    key_out[n] = '\0';
out:
    pb_port_wipe(shared, sizeof shared);
    pb_port_wipe(prk, sizeof prk);
    pb_port_wipe(okm, sizeof okm);
    pb_port_wipe(plain, sizeof plain);
    return rc;
}

int pb_unseal(char *key_out, size_t cap, const pb_reply *r, const uint8_t priv[PB_X25519_BYTES],
              const char *request_id)
{
    if (!key_out || cap == 0 || !r || !priv || !request_id) return PB_E_ARG;
    key_out[0] = '\0';
    if (!r->sealed) return PB_E_NOT_SEALED;
    return pb_unseal_raw(key_out, cap, priv, r->epk, r->nonce, r->ciphertext, r->ciphertext_len,
                         request_id);
}
