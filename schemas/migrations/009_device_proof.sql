-- 009: keys travel sealed unless a model's vendor opted out, and a model may require
-- device proof of a factory secret derived from its enrollment key.

-- Plaintext delivery is the vendor's choice, for devices that cannot do X25519. Models
-- that exist before this migration keep it (devices already in the field send no
-- public key and must keep activating); models created from now on deliver sealed.
ALTER TABLE models ADD COLUMN plaintext_keys boolean NOT NULL DEFAULT true;
ALTER TABLE models ALTER COLUMN plaintext_keys SET DEFAULT false;

-- Set when the model's first enrollment key is created: from then on a request must
-- carry a valid `proof`. Kept apart from the keys themselves, so that retiring keys can
-- never switch proof off by accident.
ALTER TABLE models ADD COLUMN proof_required boolean NOT NULL DEFAULT false;

-- A model's enrollment keys, newest generation first in use. Each is 32 random bytes,
-- stored only encrypted (ChaCha20-Poly1305 under a key derived from the server secret,
-- the model id and the generation as associated data). A rotation adds a generation and
-- keeps the previous ones accepted (devices already made carry secrets derived from
-- them) until they are retired explicitly.
CREATE TABLE enrollment_keys (
    model_id       bigint NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    generation     integer NOT NULL CHECK (generation >= 1),
    encrypted_key  bytea NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    retired_at     timestamptz,
    PRIMARY KEY (model_id, generation)
);
