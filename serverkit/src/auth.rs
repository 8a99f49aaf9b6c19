//! JWT identity at resolve (optional per deployment), for the balancers and the gateway (which
//! answers resolve itself when it can). With JWT_SECRET (HS256), a PEM public key
//! (JWT_PUBLIC_KEY_FILE: RSA → RS256, EC P-256 → ES256) or a JWKS file (JWT_JWKS_FILE, keys
//! chosen by `kid`) configured, resolve requires `Authorization: Bearer <jwt>`: a valid
//! signature, `exp` in the future, `aud` containing JWT_AUDIENCE, `iss` equal to JWT_ISSUER when
//! set, and `sub` equal to the clientId asked for. Without any of them, resolve is open (as
//! before). Every refusal is 401 `unauthorized` with a reason (docs/protocol.md).

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rtc_protocol::{ErrorCode, Refusal};
use serde::Deserialize;

/// The JWT settings (flattened into the balancer's and the gateway's settings).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct JwtArgs {
    /// HS256 key for JWT identity at resolve (at least 32 bytes); with any JWT key set, resolve
    /// requires `Authorization: Bearer <jwt>` whose `sub` is the clientId.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// A PEM public key (RSA → RS256, EC P-256 → ES256) for JWT identity at resolve.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<std::path::PathBuf>,
    /// A JWK set file (RSA and EC keys, chosen by `kid`) for JWT identity at resolve.
    #[arg(long, env = "JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<std::path::PathBuf>,
    /// The audience a token's `aud` must contain (required with JWT).
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// The issuer a token's `iss` must be, if set.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
}

/// Clock skew allowed on `exp` and `nbf`, seconds.
const LEEWAY_SECS: u64 = 30;

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

struct Key {
    kid: Option<String>,
    key: DecodingKey,
    validation: Validation,
}

/// The keys and rules a bearer token is checked against.
pub struct Verifier {
    keys: Vec<Key>,
}

fn validation(alg: Algorithm, audience: &str, issuer: Option<&str>) -> Validation {
    let mut v = Validation::new(alg);
    v.set_audience(&[audience]);
    if let Some(iss) = issuer {
        v.set_issuer(&[iss]);
    }
    v.set_required_spec_claims(&["exp", "sub", "aud"]);
    v.leeway = LEEWAY_SECS;
    v.validate_nbf = true;
    v
}

const MISSING: Refusal = Refusal::new(
    ErrorCode::Unauthorized,
    "resolve needs Authorization: Bearer <jwt> on this deployment",
);
const MALFORMED: Refusal = Refusal::new(ErrorCode::Unauthorized, "the bearer token is not a JWT");
const SIGNATURE: Refusal = Refusal::new(
    ErrorCode::Unauthorized,
    "the token's signature does not verify (or no key matches its kid and algorithm)",
);
const EXPIRED: Refusal = Refusal::new(ErrorCode::Unauthorized, "the token has expired");
const NOT_YET: Refusal = Refusal::new(ErrorCode::Unauthorized, "the token is not valid yet (nbf)");
const AUDIENCE: Refusal = Refusal::new(
    ErrorCode::Unauthorized,
    "the token's aud does not name this deployment (JWT_AUDIENCE)",
);
const ISSUER: Refusal = Refusal::new(ErrorCode::Unauthorized, "the token's iss is not JWT_ISSUER");
const CLAIMS: Refusal = Refusal::new(
    ErrorCode::Unauthorized,
    "the token lacks a required claim (exp, sub, aud) or has a malformed one",
);
const SUBJECT: Refusal = Refusal::new(
    ErrorCode::Unauthorized,
    "the token's sub is not the clientId asked for",
);

impl Verifier {
    /// The verifier the settings ask for; None when JWT is not configured.
    pub fn from_config(cfg: &JwtArgs) -> anyhow::Result<Option<Verifier>> {
        let configured = cfg.jwt_secret.is_some()
            || cfg.jwt_public_key_file.is_some()
            || cfg.jwt_jwks_file.is_some();
        if !configured {
            return Ok(None);
        }
        let aud = cfg.jwt_audience.as_deref().ok_or_else(|| {
            anyhow::anyhow!(
                "JWT_AUDIENCE must be set when JWT_SECRET, JWT_PUBLIC_KEY_FILE or JWT_JWKS_FILE is"
            )
        })?;
        let iss = cfg.jwt_issuer.as_deref();
        let mut keys = Vec::new();
        if let Some(secret) = &cfg.jwt_secret {
            anyhow::ensure!(secret.len() >= 32, "JWT_SECRET must be at least 32 bytes");
            keys.push(Key {
                kid: None,
                key: DecodingKey::from_secret(secret.as_bytes()),
                validation: validation(Algorithm::HS256, aud, iss),
            });
        }
        if let Some(path) = &cfg.jwt_public_key_file {
            let pem = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("JWT_PUBLIC_KEY_FILE {}: {e}", path.display()))?;
            let (key, alg) = match DecodingKey::from_rsa_pem(&pem) {
                Ok(k) => (k, Algorithm::RS256),
                Err(_) => (
                    DecodingKey::from_ec_pem(&pem).map_err(|e| {
                        anyhow::anyhow!(
                            "JWT_PUBLIC_KEY_FILE is neither an RSA nor an EC public key: {e}"
                        )
                    })?,
                    Algorithm::ES256,
                ),
            };
            keys.push(Key {
                kid: None,
                key,
                validation: validation(alg, aud, iss),
            });
        }
        if let Some(path) = &cfg.jwt_jwks_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("JWT_JWKS_FILE {}: {e}", path.display()))?;
            let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("JWT_JWKS_FILE is not a JWK set: {e}"))?;
            for jwk in &set.keys {
                use jsonwebtoken::jwk::AlgorithmParameters as P;
                let alg = match &jwk.algorithm {
                    P::RSA(_) => Algorithm::RS256,
                    P::EllipticCurve(_) => Algorithm::ES256,
                    _ => continue,
                };
                keys.push(Key {
                    kid: jwk.common.key_id.clone(),
                    key: DecodingKey::from_jwk(jwk)?,
                    validation: validation(alg, aud, iss),
                });
            }
            anyhow::ensure!(!keys.is_empty(), "JWT_JWKS_FILE has no RSA or EC key");
        }
        Ok(Some(Verifier { keys }))
    }

    /// Checks the `Authorization` header of a resolve for `client_id`.
    pub fn check(&self, authorization: Option<&str>, client_id: &str) -> Result<(), Refusal> {
        let token = authorization
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(MISSING)?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| MALFORMED)?;
        let candidates = self.keys.iter().filter(|k| {
            k.validation.algorithms.contains(&header.alg)
                && (k.kid.is_none() || k.kid == header.kid)
        });
        let mut refusal = SIGNATURE;
        for k in candidates {
            match jsonwebtoken::decode::<Claims>(token, &k.key, &k.validation) {
                Ok(data) if data.claims.sub == client_id => return Ok(()),
                Ok(_) => return Err(SUBJECT),
                Err(e) => {
                    refusal = match e.kind() {
                        ErrorKind::InvalidSignature
                        | ErrorKind::InvalidAlgorithm
                        | ErrorKind::InvalidKeyFormat => SIGNATURE,
                        ErrorKind::ExpiredSignature => return Err(EXPIRED),
                        ErrorKind::ImmatureSignature => return Err(NOT_YET),
                        ErrorKind::InvalidAudience => return Err(AUDIENCE),
                        ErrorKind::InvalidIssuer => return Err(ISSUER),
                        ErrorKind::MissingRequiredClaim(_)
                        | ErrorKind::InvalidSubject
                        | ErrorKind::Json(_) => return Err(CLAIMS),
                        _ => MALFORMED,
                    }
                }
            }
        }
        Err(refusal)
    }
}
