/*
 * pbridge-activate: activate one device over MQTT with libmosquitto and pbridge.
 *
 * What firmware does, as a POSIX program: connect (MQTT 5, falling back to 3.1.1),
 * subscribe to the private reply topic, publish the request, wait for the reply with
 * our request id; on a timeout publish the identical request again (same request id,
 * so the bridge replays its stored reply and never issues a second key), and after
 * `rate_limited` / `unavailable` wait `retry_after` seconds and do the same. Keys travel
 * sealed (a fresh X25519 key pair per run) unless --plaintext.
 *
 * Exit status as `bridge activate`: 0 key received; 1 refused (or a usage error, like
 * `bridge`'s "error: usage: ..."); 2 no reply / broker unreachable.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pbridge.h"

#define EXIT_OK 0
#define EXIT_REFUSED 1
#define EXIT_USAGE 1
#define EXIT_NO_REPLY 2

typedef struct {
    const char *host, *username, *cafile, *prefix, *vendor, *model, *identifier;
    const char *client_id, *request_id, *secret_file, *private_key_file;
    int port, plaintext, attempts, drop_replies, protocol; /* protocol: 0 auto, 5, 311 */
    double timeout, max_wait;
} options;

typedef struct {
    int connected, connack_rc, closed, subscribed, got_reply, dropped, drop_replies;
    int sub_mid, sealed_request;
    const char *prefix, *client_id;
    char payload[PB_REPLY_MAX_LEN + 1];
    size_t payload_len;
    const char *request_id;
} state;

static int rng(void *ctx, uint8_t *buf, size_t len)
{
    (void)ctx;
    randombytes_buf(buf, len);
    return 0;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void on_connect(struct mosquitto *m, void *obj, int rc, int flags, const mosquitto_property *p)
{
    state *s = obj;
    (void)m, (void)flags, (void)p;
    s->connack_rc = rc;
    s->connected = rc == 0;
    if (rc != 0) s->closed = 1;
}

static void on_disconnect(struct mosquitto *m, void *obj, int rc, const mosquitto_property *p)
{
    state *s = obj;
    (void)m, (void)rc, (void)p;
    s->closed = 1;
    s->connected = 0;
}

static void on_subscribe(struct mosquitto *m, void *obj, int mid, int n, const int *granted,
                         const mosquitto_property *p)
{
    state *s = obj;
    (void)m, (void)p;
    if (mid == s->sub_mid && n == 1 && granted[0] <= 2) s->subscribed = 1;
    else if (mid == s->sub_mid) s->closed = 1; /* refused by the broker's ACL */
}

static void on_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg,
                       const mosquitto_property *p)
{
    state *s = obj;
    pb_reply r;
    (void)m, (void)p;
    if (!pb_is_reply_topic(msg->topic, strlen(msg->topic), s->prefix, s->client_id)) return;
    if (msg->payloadlen < 0 || (size_t)msg->payloadlen > PB_REPLY_MAX_LEN) return;
    /* an answer to an earlier request of this client id, or garbage: not ours */
    if (pb_parse_reply(&r, msg->payload, (size_t)msg->payloadlen) != PB_OK ||
        pb_reply_matches(&r, s->request_id) != PB_OK)
        return;
    if (s->sealed_request && r.status == PB_STATUS_OK && !r.sealed) {
        /* We sent a public key, so the bridge seals: a plain key is someone else's forgery
           (a downgrade); keep waiting for the genuine reply. */
        fprintf(stderr, "note: ignoring an unsealed key in answer to a sealed request\n");
        return;
    }
    if (s->dropped < s->drop_replies) { /* fault injection: the reply is "lost" */
        s->dropped++;
        fprintf(stderr, "note: dropping reply %d (--drop-replies)\n", s->dropped);
        return;
    }
    memcpy(s->payload, msg->payload, (size_t)msg->payloadlen);
    s->payload_len = (size_t)msg->payloadlen;
    s->payload[s->payload_len] = '\0';
    s->got_reply = 1;
}

/* Drive the network loop until *flag, the connection closes, or the deadline. */
static int wait_for(struct mosquitto *m, state *s, const int *flag, double deadline)
{
    while (!*flag) {
        int rc;
        if (s->closed || now() >= deadline) return 0;
        rc = mosquitto_loop(m, 100, 1);
        if (rc == MOSQ_ERR_CONN_LOST || rc == MOSQ_ERR_NO_CONN || rc == MOSQ_ERR_CONN_REFUSED ||
            rc == MOSQ_ERR_PROTOCOL) {
            s->closed = 1;
            return 0;
        }
    }
    return 1;
}

static void sleep_seconds(struct mosquitto *m, double seconds)
{
    double end = now() + seconds;
    while (now() < end) mosquitto_loop(m, 100, 1); /* keep the session alive meanwhile */
}

static int try_connect(struct mosquitto **out, state *s, const options *o, int version)
{
    struct mosquitto *m = mosquitto_new(o->client_id, true, s);
    const char *password = getenv("PBRIDGE_PASSWORD");
    int rc;
    if (!m) return -1;
    mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, version);
    mosquitto_connect_v5_callback_set(m, on_connect);
    mosquitto_disconnect_v5_callback_set(m, on_disconnect);
    mosquitto_subscribe_v5_callback_set(m, on_subscribe);
    mosquitto_message_v5_callback_set(m, on_message);
    if (o->username) mosquitto_username_pw_set(m, o->username, password);
    if (o->cafile && mosquitto_tls_set(m, o->cafile, NULL, NULL, NULL, NULL) != MOSQ_ERR_SUCCESS) {
        mosquitto_destroy(m);
        return -1;
    }
    s->connected = s->closed = 0;
    s->connack_rc = -1;
    rc = mosquitto_connect_bind_v5(m, o->host, o->port, 30, NULL, NULL);
    if (rc != MOSQ_ERR_SUCCESS || !wait_for(m, s, &s->connected, now() + o->timeout)) {
        mosquitto_destroy(m);
        return -1;
    }
    *out = m;
    return 0;
}

static int connect_broker(struct mosquitto **m, state *s, const options *o)
{
    if (o->protocol != 311) {
        if (try_connect(m, s, o, MQTT_PROTOCOL_V5) == 0) return 0;
        if (o->protocol == 5) return -1;
        /* A 3.1.1 broker refuses (or drops) a v5 CONNECT: say it, then speak 3.1.1. */
        fprintf(stderr, "note: no MQTT 5 session (CONNACK %d); trying MQTT 3.1.1\n", s->connack_rc);
    }
    return try_connect(m, s, o, MQTT_PROTOCOL_V311);
}

static int read_hex_file(const char *path, uint8_t *out, size_t n, const char *what)
{
    char buf[160];
    size_t len, i;
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "error: malformed: The %s file '%s' cannot be read (%s).\n", what, path, strerror(errno));
        return -1;
    }
    len = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[len] = '\0';
    while (len && (buf[len - 1] == '\n' || buf[len - 1] == '\r' || buf[len - 1] == ' ')) buf[--len] = '\0';
    if (len != 2 * n || sodium_hex2bin(out, n, buf, len, NULL, NULL, NULL) != 0) {
        /* the text is a secret, or nearly: never echoed */
        fprintf(stderr, "error: malformed: The %s file '%s' must hold %zu hex characters and nothing else.\n",
                what, path, 2 * n);
        sodium_memzero(buf, sizeof buf);
        return -1;
    }
    for (i = 0; i < len; i++) buf[i] = 0;
    sodium_memzero(buf, sizeof buf);
    return 0;
}

static int usage(const char *why)
{
    fprintf(stderr,
            "error: usage: %s\n"
            "usage: pbridge-activate --vendor V --model M --identifier ID [--host H] [--port P]\n"
            "  [--prefix P] [--client-id C] [--request-id R] [--plaintext] [--device-secret-file F]\n"
            "  [--private-key-file F] [--username U (password from $PBRIDGE_PASSWORD)] [--cafile F]\n"
            "  [--timeout S] [--attempts N] [--max-wait S] [--mqtt 5|3.1.1|auto] [--drop-replies N]\n",
            why);
    return EXIT_USAGE;
}

static int parse_args(options *o, int argc, char **argv)
{
    int i;
    memset(o, 0, sizeof *o);
    o->host = "localhost";
    o->port = 1883;
    o->prefix = "provision";
    o->timeout = 10;
    o->attempts = 3;
    o->max_wait = 300;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--plaintext") == 0) {
            o->plaintext = 1;
            continue;
        }
        if (!v) return usage("an option lacks its value");
        i++;
        if (strcmp(a, "--host") == 0) o->host = v;
        else if (strcmp(a, "--port") == 0) o->port = atoi(v);
        else if (strcmp(a, "--prefix") == 0) o->prefix = v;
        else if (strcmp(a, "--vendor") == 0) o->vendor = v;
        else if (strcmp(a, "--model") == 0) o->model = v;
        else if (strcmp(a, "--identifier") == 0) o->identifier = v;
        else if (strcmp(a, "--client-id") == 0) o->client_id = v;
        else if (strcmp(a, "--request-id") == 0) o->request_id = v;
        else if (strcmp(a, "--device-secret-file") == 0) o->secret_file = v;
        else if (strcmp(a, "--private-key-file") == 0) o->private_key_file = v;
        else if (strcmp(a, "--username") == 0) o->username = v;
        else if (strcmp(a, "--cafile") == 0) o->cafile = v;
        else if (strcmp(a, "--timeout") == 0) o->timeout = atof(v);
        else if (strcmp(a, "--attempts") == 0) o->attempts = atoi(v);
        else if (strcmp(a, "--max-wait") == 0) o->max_wait = atof(v);
        else if (strcmp(a, "--drop-replies") == 0) o->drop_replies = atoi(v);
        else if (strcmp(a, "--mqtt") == 0) {
            if (strcmp(v, "5") == 0) o->protocol = 5;
            else if (strcmp(v, "3.1.1") == 0) o->protocol = 311;
            else if (strcmp(v, "auto") == 0) o->protocol = 0;
            else return usage("--mqtt must be 5, 3.1.1 or auto");
        } else {
            return usage("unknown option");
        }
    }
    if (!o->vendor || !o->model || !o->identifier) return usage("--vendor, --model and --identifier are required");
    if (o->port <= 0 || o->port > 65535 || o->timeout <= 0 || o->attempts < 1 || o->max_wait < 0 ||
        o->drop_replies < 0)
        return usage("a number is out of range");
    if (o->plaintext && o->private_key_file) return usage("--plaintext and --private-key-file exclude each other");
    return -1;
}

int main(int argc, char **argv)
{
    options o;
    state s;
    struct mosquitto *m = NULL;
    char client_id[PB_CLIENT_ID_MAX_LEN + 1], request_id[PB_REQUEST_ID_MAX_LEN + 1];
    char activate[PB_TOPIC_MAX], reply_topic[PB_TOPIC_MAX], request[PB_REQUEST_MAX], key[PB_KEY_SIZE];
    uint8_t priv[PB_X25519_BYTES], pub[PB_X25519_BYTES], secret[PB_SECRET_BYTES];
    pb_request req;
    pb_reply r;
    size_t len;
    int rc, attempt, status = EXIT_NO_REPLY;
    double wait;

    if ((rc = parse_args(&o, argc, argv)) >= 0) return rc;
    if (sodium_init() < 0) return EXIT_NO_REPLY;
    memset(&s, 0, sizeof s);
    memset(&req, 0, sizeof req);

    if (o.client_id) {
        snprintf(client_id, sizeof client_id, "%s", o.client_id);
    } else {
        uint8_t raw[6];
        char hex[13];
        rng(NULL, raw, sizeof raw);
        sodium_bin2hex(hex, sizeof hex, raw, sizeof raw);
        snprintf(client_id, sizeof client_id, "device-%s", hex);
    }
    if (o.request_id) snprintf(request_id, sizeof request_id, "%s", o.request_id);
    else if (pb_new_request_id(request_id, rng, NULL) != PB_OK) return EXIT_NO_REPLY;
    o.client_id = client_id;

    if (!o.plaintext) {
        if (o.private_key_file) {
            /* a device that must survive a reboot mid-activation keeps its key pair */
            if (read_hex_file(o.private_key_file, priv, sizeof priv, "private key") != 0) return EXIT_USAGE;
            crypto_scalarmult_curve25519_base(pub, priv);
        } else if (pb_new_keypair(priv, pub, rng, NULL) != PB_OK) {
            return EXIT_NO_REPLY;
        }
        req.public_key = pub;
    }
    if (o.secret_file) {
        if (read_hex_file(o.secret_file, secret, sizeof secret, "device secret") != 0) return EXIT_USAGE;
        req.device_secret = secret;
    }
    req.client_id = client_id;
    req.request_id = request_id;
    req.vendor = o.vendor;
    req.model = o.model;
    req.identifier = o.identifier;
    if ((rc = pb_build_request(request, sizeof request, &len, &req)) != PB_OK ||
        (rc = pb_activate_topic(activate, sizeof activate, o.prefix, client_id)) != PB_OK ||
        (rc = pb_reply_topic(reply_topic, sizeof reply_topic, o.prefix, client_id)) != PB_OK) {
        fprintf(stderr, "error: usage: %s\n", pb_strerror(rc));
        return EXIT_USAGE;
    }
    sodium_memzero(secret, sizeof secret); /* the proof is in the request; the secret is done */

    mosquitto_lib_init();
    s.prefix = o.prefix;
    s.client_id = client_id;
    s.request_id = request_id;
    s.drop_replies = o.drop_replies;
    s.sealed_request = !o.plaintext;
    wait = o.timeout;
    for (attempt = 1; attempt <= o.attempts; attempt++) {
        if (!m || s.closed) {
            if (m) mosquitto_destroy(m);
            m = NULL;
            if (connect_broker(&m, &s, &o) != 0) {
                fprintf(stderr, "note: cannot reach the broker at %s:%d (attempt %d of %d)\n", o.host,
                        o.port, attempt, o.attempts);
                if (attempt < o.attempts) {
                    struct timespec ts = {(time_t)wait, 0};
                    nanosleep(&ts, NULL);
                }
                continue;
            }
            s.subscribed = 0;
            if (mosquitto_subscribe_v5(m, &s.sub_mid, reply_topic, 1, 0, NULL) != MOSQ_ERR_SUCCESS ||
                !wait_for(m, &s, &s.subscribed, now() + o.timeout)) {
                fprintf(stderr, "note: no subscription to %s\n", reply_topic);
                s.closed = 1;
                continue;
            }
        }
        if (attempt > 1) fprintf(stderr, "note: sending the identical request again (request id %s)\n", request_id);
        s.got_reply = 0;
        if (mosquitto_publish_v5(m, NULL, activate, (int)len, request, 1, false, NULL) != MOSQ_ERR_SUCCESS) {
            s.closed = 1;
            continue;
        }
        if (!wait_for(m, &s, &s.got_reply, now() + wait)) {
            fprintf(stderr, "note: no reply within %g seconds\n", wait);
            wait = wait * 2 > 60 ? 60 : wait * 2; /* back off: the bridge may be catching up */
            continue;
        }
        rc = pb_parse_reply(&r, s.payload, s.payload_len);
        if (rc != PB_OK) continue; /* cannot happen: on_message parsed it */
        if (r.status == PB_STATUS_ERROR && pb_code_is_transient(r.code) && attempt < o.attempts) {
            double after = r.retry_after > 0 ? (double)r.retry_after : 1;
            if (after > o.max_wait) {
                fprintf(stderr, "error: %s: %s\n", r.code_text, r.message);
                status = EXIT_REFUSED;
                break;
            }
            fprintf(stderr, "note: %s; retrying the same request in %g seconds\n", r.code_text, after);
            sleep_seconds(m, after);
            continue;
        }
        if (r.status == PB_STATUS_ERROR) {
            fprintf(stderr, "error: %s: %s\n", r.code_text, r.message);
            status = EXIT_REFUSED;
            break;
        }
        if (r.sealed) {
            if (o.plaintext) {
                fprintf(stderr, "error: sealed: the key came back sealed but this run has no private key\n");
                status = EXIT_REFUSED;
                break;
            }
            rc = pb_unseal(key, sizeof key, &r, priv, request_id);
            if (rc != PB_OK) {
                fprintf(stderr,
                        "error: sealed: the key does not open with this run's private key (%s); the reply "
                        "is the one stored for an earlier run with this request id\n",
                        pb_strerror(rc));
                status = EXIT_REFUSED;
                break;
            }
        } else {
            snprintf(key, sizeof key, "%s", r.key);
        }
        printf("ok: %s/%s %s\n", r.vendor, r.model, r.identifier);
        printf("key: %s%s\n", key, r.sealed ? " (was sealed)" : "");
        sodium_memzero(key, sizeof key);
        status = EXIT_OK;
        break;
    }
    if (status == EXIT_NO_REPLY)
        fprintf(stderr, "error: timeout: no reply after %d attempts; is `bridge serve` running?\n", o.attempts);
    sodium_memzero(priv, sizeof priv);
    if (m) {
        mosquitto_disconnect_v5(m, 0, NULL);
        mosquitto_loop(m, 100, 1);
        mosquitto_destroy(m);
    }
    mosquitto_lib_cleanup();
    return status;
}
