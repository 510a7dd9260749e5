//! Signing keys inside a PKCS#11 token (HSM, smart card, SoftHSM), addressed
//! by RFC 7512 URIs such as
//! `pkcs11:token=release;object=root-1;id=%01?module-path=/usr/lib/softhsm/libsofthsm2.so`.
//!
//! The private key never leaves the token: keys are generated inside it as
//! sensitive, non-extractable, sign-only private objects, and every signature
//! is made by the token. Tokens are found by label (or serial), never by
//! slot number, because slot numbers change when tokens are added or
//! re-initialised. The PIN comes from `pin-source=file:PATH` in the URI or
//! from env `OTA_PKCS11_PIN`; a `pin-value` in the URI is refused so a PIN can
//! never end up in repo.json, shell history or a process listing.

use crate::error::{Result, SigningError};
use crate::keys::KeyType;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType as CkKeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};
use tough::key_source::KeySource;
use tough::schema::key::{
    EcdsaKey, EcdsaScheme, Ed25519Key, Ed25519Scheme, Key, RsaKey, RsaScheme,
};
use tough::sign::Sign;

/// Environment variable holding the token PIN when the URI has no `pin-source`.
pub const PIN_ENV: &str = "OTA_PKCS11_PIN";

/// DER of the OID 1.3.101.112 (Ed25519), as CKA_EC_PARAMS.
const ED25519_PARAMS: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// DER of the OID 1.2.840.10045.3.1.7 (NIST P-256 / secp256r1).
const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const RSA_BITS: u64 = 3072;

/// A parsed `pkcs11:` URI (RFC 7512), restricted to what a signing key needs.
#[derive(Clone, PartialEq, Eq)]
pub struct Pkcs11Uri {
    pub token: Option<String>,
    pub serial: Option<String>,
    pub object: Option<String>,
    pub id: Option<Vec<u8>>,
    pub module_path: PathBuf,
    /// File holding the PIN (not the PIN itself).
    pub pin_source: Option<PathBuf>,
}

impl fmt::Debug for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

fn invalid(uri: &str, detail: impl fmt::Display) -> SigningError {
    SigningError::InvalidArgument(format!("invalid PKCS#11 URI {uri:?}: {detail}"))
}

fn percent_decode(uri: &str, s: &str) -> Result<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .ok_or_else(|| invalid(uri, "truncated %-escape"))?;
            let b = u8::from_str_radix(hex, 16)
                .map_err(|_| invalid(uri, format!("bad %-escape %{hex}")))?;
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn percent_decode_str(uri: &str, s: &str) -> Result<String> {
    String::from_utf8(percent_decode(uri, s)?).map_err(|_| invalid(uri, "value is not UTF-8"))
}

fn percent_encode(bytes: &[u8], all: bool) -> String {
    let mut out = String::new();
    for &b in bytes {
        if !all && (b.is_ascii_alphanumeric() || b"-._~/:".contains(&b)) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

impl FromStr for Pkcs11Uri {
    type Err = SigningError;

    fn from_str(uri: &str) -> Result<Self> {
        Self::parse(uri, true)
    }
}

impl Pkcs11Uri {
    /// A URI naming a token (for `init --key-store`), object optional.
    pub fn parse_token(uri: &str) -> Result<Self> {
        Self::parse(uri, false)
    }

    fn parse(uri: &str, need_object: bool) -> Result<Self> {
        let rest = uri
            .strip_prefix("pkcs11:")
            .ok_or_else(|| invalid(uri, "does not start with pkcs11:"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut parsed = Pkcs11Uri {
            token: None,
            serial: None,
            object: None,
            id: None,
            module_path: PathBuf::new(),
            pin_source: None,
        };
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (k, v) = attr
                .split_once('=')
                .ok_or_else(|| invalid(uri, format!("path attribute {attr:?} has no '='")))?;
            match k {
                "token" => parsed.token = Some(percent_decode_str(uri, v)?),
                "serial" => parsed.serial = Some(percent_decode_str(uri, v)?),
                "object" => parsed.object = Some(percent_decode_str(uri, v)?),
                "id" => parsed.id = Some(percent_decode(uri, v)?),
                // Describe the token or object type; the key is found without them.
                "type" | "manufacturer" | "model" | "library-manufacturer"
                | "library-description" | "library-version" | "slot-description"
                | "slot-manufacturer" => {}
                "pin-value" => return Err(invalid(uri, "pin-value is refused: put the PIN in a file named by pin-source=file:PATH, or in env OTA_PKCS11_PIN")),
                other => return Err(invalid(uri, format!("unsupported path attribute {other:?}"))),
            }
        }
        for attr in query.split('&').filter(|a| !a.is_empty()) {
            let (k, v) = attr
                .split_once('=')
                .ok_or_else(|| invalid(uri, format!("query attribute {attr:?} has no '='")))?;
            match k {
                "module-path" => parsed.module_path = PathBuf::from(percent_decode_str(uri, v)?),
                "pin-source" => {
                    let v = percent_decode_str(uri, v)?;
                    let path = v.strip_prefix("file:").unwrap_or(&v);
                    // file:///etc/x and file:/etc/x both name /etc/x.
                    let path = path.strip_prefix("//").unwrap_or(path);
                    parsed.pin_source = Some(PathBuf::from(path));
                }
                "pin-value" => return Err(invalid(uri, "pin-value is refused: put the PIN in a file named by pin-source=file:PATH, or in env OTA_PKCS11_PIN")),
                other => return Err(invalid(uri, format!("unsupported query attribute {other:?} (module-path and pin-source are supported)"))),
            }
        }
        if parsed.token.is_none() && parsed.serial.is_none() {
            return Err(invalid(
                uri,
                "name the token with token=LABEL or serial=SERIAL",
            ));
        }
        if need_object && parsed.object.is_none() && parsed.id.is_none() {
            return Err(invalid(uri, "name the key with object=LABEL or id=%XX"));
        }
        if parsed.module_path.as_os_str().is_empty() {
            return Err(invalid(
                uri,
                "module-path=/path/to/pkcs11-module.so is required",
            ));
        }
        Ok(parsed)
    }
}

impl fmt::Display for Pkcs11Uri {
    /// The canonical form stored in repo.json (never contains a PIN).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut path = Vec::new();
        if let Some(t) = &self.token {
            path.push(format!("token={}", percent_encode(t.as_bytes(), false)));
        }
        if let Some(s) = &self.serial {
            path.push(format!("serial={}", percent_encode(s.as_bytes(), false)));
        }
        if let Some(o) = &self.object {
            path.push(format!("object={}", percent_encode(o.as_bytes(), false)));
        }
        if let Some(id) = &self.id {
            path.push(format!("id={}", percent_encode(id, true)));
        }
        let mut query = vec![format!(
            "module-path={}",
            percent_encode(self.module_path.to_string_lossy().as_bytes(), false)
        )];
        if let Some(p) = &self.pin_source {
            query.push(format!(
                "pin-source=file:{}",
                percent_encode(p.to_string_lossy().as_bytes(), false)
            ));
        }
        write!(f, "pkcs11:{}?{}", path.join(";"), query.join("&"))
    }
}

impl Pkcs11Uri {
    /// "PKCS#11 token X, object Y" for status output and the audit log.
    pub fn describe(&self) -> String {
        let token = match (&self.token, &self.serial) {
            (Some(t), _) => t.clone(),
            (None, Some(s)) => format!("serial {s}"),
            (None, None) => "?".to_owned(),
        };
        let object = match (&self.object, &self.id) {
            (Some(o), _) => o.clone(),
            (None, Some(id)) => format!("id {}", hex::encode(id)),
            (None, None) => "?".to_owned(),
        };
        format!("PKCS#11 token {token}, object {object}")
    }

    fn pin(&self) -> Result<AuthPin> {
        let pin = match &self.pin_source {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    self.error(format!("reading the PIN file {}: {e}", path.display()))
                })?;
                text.trim_end_matches(['\n', '\r']).to_owned()
            }
            None => std::env::var(PIN_ENV).map_err(|_| {
                self.error(format!(
                    "no PIN: set env {PIN_ENV} or add pin-source=file:PATH to the URI"
                ))
            })?,
        };
        Ok(AuthPin::from(pin))
    }

    fn error(&self, detail: impl fmt::Display) -> SigningError {
        SigningError::Pkcs11 {
            key: self.describe(),
            detail: detail.to_string(),
        }
    }

    fn ck(&self, what: &'static str) -> impl FnOnce(cryptoki::error::Error) -> SigningError + '_ {
        move |e| self.error(format!("{what}: {e}"))
    }

    /// A logged-in session on the token this URI names.
    fn session(&self) -> Result<Session> {
        self.open_session(true)
    }

    /// The public key, read without logging in (public key objects are
    /// not private), for `status`.
    pub fn public_key(&self) -> Result<Key> {
        let session = self.open_session(false)?;
        Ok(self.read_public(&session)?.0)
    }

    fn open_session(&self, login: bool) -> Result<Session> {
        let ctx = context(&self.module_path).map_err(|e| self.error(e))?;
        let slot = self.find_slot(&ctx)?;
        let session = ctx
            .open_rw_session(slot)
            .map_err(self.ck("opening a session"))?;
        if !login {
            return Ok(session);
        }
        match session.login(UserType::User, Some(&self.pin()?)) {
            Ok(()) => {}
            // Login state is per token and application: another session of
            // this process may have logged in already.
            Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::UserAlreadyLoggedIn,
                _,
            )) => {}
            Err(e) => return Err(self.error(format!("login failed: {e}"))),
        }
        Ok(session)
    }

    fn find_slot(&self, ctx: &Pkcs11) -> Result<Slot> {
        let slots = ctx
            .get_slots_with_token()
            .map_err(self.ck("listing slots"))?;
        let mut found = Vec::new();
        let mut seen = Vec::new();
        for slot in slots {
            let info = ctx
                .get_token_info(slot)
                .map_err(self.ck("reading token info"))?;
            let label = info.label().trim_end().to_owned();
            let serial = info.serial_number().trim_end().to_owned();
            let label_ok = self.token.as_ref().is_none_or(|t| *t == label);
            let serial_ok = self.serial.as_ref().is_none_or(|s| *s == serial);
            if label_ok && serial_ok {
                found.push(slot);
            }
            seen.push(format!("{label:?} (serial {serial})"));
        }
        match found.len() {
            1 => Ok(found[0]),
            0 => Err(self.error(format!(
                "no such token; tokens present: {}",
                if seen.is_empty() {
                    "none".to_owned()
                } else {
                    seen.join(", ")
                }
            ))),
            n => Err(self.error(format!(
                "{n} tokens match; add serial=... to the URI to choose one"
            ))),
        }
    }

    fn template(&self, class: ObjectClass) -> Vec<Attribute> {
        let mut t = vec![Attribute::Class(class)];
        if let Some(o) = &self.object {
            t.push(Attribute::Label(o.as_bytes().to_vec()));
        }
        if let Some(id) = &self.id {
            t.push(Attribute::Id(id.clone()));
        }
        t
    }

    fn find_one(&self, session: &Session, class: ObjectClass, what: &str) -> Result<ObjectHandle> {
        let found = session
            .find_objects(&self.template(class))
            .map_err(self.ck("searching objects"))?;
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(self.error(format!("no {what} with this label/id in the token"))),
            more => Err(self.error(format!(
                "{} {what}s match; add id=... to the URI to choose one",
                more.len()
            ))),
        }
    }

    /// The public key (as a TUF key) of the key pair this URI names.
    fn read_public(&self, session: &Session) -> Result<(Key, KeyType)> {
        let handle = self.find_one(session, ObjectClass::PUBLIC_KEY, "public key")?;
        let attrs = session
            .get_attributes(
                handle,
                &[
                    AttributeType::KeyType,
                    AttributeType::EcPoint,
                    AttributeType::EcParams,
                    AttributeType::Modulus,
                    AttributeType::PublicExponent,
                ],
            )
            .map_err(self.ck("reading the public key"))?;
        let mut key_type = None;
        let (mut point, mut params, mut modulus, mut exponent) = (None, None, None, None);
        for a in attrs {
            match a {
                Attribute::KeyType(k) => key_type = Some(k),
                Attribute::EcPoint(p) => point = Some(p),
                Attribute::EcParams(p) => params = Some(p),
                Attribute::Modulus(m) => modulus = Some(m),
                Attribute::PublicExponent(e) => exponent = Some(e),
                _ => {}
            }
        }
        let missing = |what: &str| self.error(format!("the public key has no {what}"));
        match key_type {
            Some(k) if k == CkKeyType::EC_EDWARDS => {
                let point = point.ok_or_else(|| missing("CKA_EC_POINT"))?;
                let raw = unwrap_octet_string(&point, 32)
                    .ok_or_else(|| self.error("CKA_EC_POINT is not a 32-byte Ed25519 key"))?;
                Ok((
                    Key::Ed25519 {
                        keyval: Ed25519Key {
                            public: raw.into(),
                            _extra: HashMap::new(),
                        },
                        scheme: Ed25519Scheme::Ed25519,
                        _extra: HashMap::new(),
                    },
                    KeyType::Ed25519,
                ))
            }
            Some(k) if k == CkKeyType::EC => {
                if params.as_deref() != Some(P256_PARAMS) {
                    return Err(self.error(
                        "the EC key is not on NIST P-256 (only ecdsa-sha2-nistp256 is supported)",
                    ));
                }
                let point = point.ok_or_else(|| missing("CKA_EC_POINT"))?;
                let raw = unwrap_octet_string(&point, 65)
                    .filter(|p| p[0] == 0x04)
                    .ok_or_else(|| self.error("CKA_EC_POINT is not an uncompressed P-256 point"))?;
                Ok((
                    Key::Ecdsa {
                        keyval: EcdsaKey {
                            public: raw.into(),
                            _extra: HashMap::new(),
                        },
                        scheme: EcdsaScheme::EcdsaSha2Nistp256,
                        _extra: HashMap::new(),
                    },
                    KeyType::Ecdsa,
                ))
            }
            Some(k) if k == CkKeyType::RSA => {
                let n = modulus.ok_or_else(|| missing("CKA_MODULUS"))?;
                let e = exponent.ok_or_else(|| missing("CKA_PUBLIC_EXPONENT"))?;
                if n.len() * 8 < 2048 {
                    return Err(self.error("the RSA key is shorter than 2048 bits"));
                }
                Ok((
                    Key::Rsa {
                        keyval: RsaKey {
                            public: rsa_public_key_der(&n, &e).into(),
                            _extra: HashMap::new(),
                        },
                        scheme: RsaScheme::RsassaPssSha256,
                        _extra: HashMap::new(),
                    },
                    KeyType::Rsa,
                ))
            }
            _ => Err(self.error("the key is not Ed25519, ECDSA P-256 or RSA")),
        }
    }

    /// Opens the token and returns a signer for this key.
    pub fn signer(&self) -> Result<Pkcs11Signer> {
        let session = self.session()?;
        let (public, key_type) = self.read_public(&session)?;
        let private = self.find_one(&session, ObjectClass::PRIVATE_KEY, "private key")?;
        Ok(Pkcs11Signer {
            uri: self.clone(),
            public,
            key_type,
            private,
            session: Mutex::new(session),
        })
    }

    /// Generates a key pair inside the token: the private half sensitive,
    /// never extractable, private (PIN needed) and good for signing only.
    /// Refuses to create a second key under the same label/id.
    pub fn generate(&self, key_type: KeyType) -> Result<Key> {
        let session = self.session()?;
        for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
            let existing = session
                .find_objects(&self.template(class))
                .map_err(self.ck("searching objects"))?;
            if !existing.is_empty() {
                return Err(self.error("a key with this label/id already exists in the token; choose another object= or id="));
            }
        }
        let mut public = vec![
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
        ];
        let mut private = vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
        ];
        for t in [&mut public, &mut private] {
            if let Some(o) = &self.object {
                t.push(Attribute::Label(o.as_bytes().to_vec()));
            }
            if let Some(id) = &self.id {
                t.push(Attribute::Id(id.clone()));
            }
        }
        let mechanism = match key_type {
            KeyType::Ed25519 => {
                public.push(Attribute::EcParams(ED25519_PARAMS.to_vec()));
                Mechanism::EccEdwardsKeyPairGen
            }
            KeyType::Ecdsa => {
                public.push(Attribute::EcParams(P256_PARAMS.to_vec()));
                Mechanism::EccKeyPairGen
            }
            KeyType::Rsa => {
                public.push(Attribute::ModulusBits(RSA_BITS.into()));
                public.push(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]));
                Mechanism::RsaPkcsKeyPairGen
            }
        };
        session
            .generate_key_pair(&mechanism, &public, &private)
            .map_err(|e| {
                self.error(format!(
                    "generating a {key_type} key pair in the token: {e}"
                ))
            })?;
        Ok(self.read_public(&session)?.0)
    }
}

/// How a private key is protected, as the token itself reports it (read
/// back with C_GetAttributeValue, not what we asked for at generation), for
/// the IEC 81001-5-1 §5.8.4 evidence. An attribute the token does not
/// report is `None`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyProtection {
    pub token_label: String,
    pub token_manufacturer: String,
    pub token_model: String,
    pub token_serial: String,
    /// CKA_SENSITIVE: the key value is never revealed in plaintext.
    pub sensitive: Option<bool>,
    /// CKA_ALWAYS_SENSITIVE: it has been sensitive since it was created.
    pub always_sensitive: Option<bool>,
    /// CKA_EXTRACTABLE: it may be exported (wrapped).
    pub extractable: Option<bool>,
    /// CKA_NEVER_EXTRACTABLE: it has never been exportable.
    pub never_extractable: Option<bool>,
    /// CKA_LOCAL: generated inside the token (not imported).
    pub local: Option<bool>,
    /// CKA_PRIVATE: a login (PIN) is needed to use it.
    pub private: Option<bool>,
    /// CKA_SIGN, CKA_DECRYPT, CKA_UNWRAP, CKA_DERIVE: what it may be used for.
    pub sign: Option<bool>,
    pub decrypt: Option<bool>,
    pub unwrap: Option<bool>,
    pub derive: Option<bool>,
    /// CKA_ALLOWED_MECHANISMS, when the token supports the attribute.
    pub allowed_mechanisms: Option<Vec<String>>,
}

impl Pkcs11Uri {
    /// Reads the private key's protection attributes back from the token
    /// (needs the PIN: the private key object is only visible after login).
    pub fn key_protection(&self) -> Result<KeyProtection> {
        let ctx = context(&self.module_path).map_err(|e| self.error(e))?;
        let slot = self.find_slot(&ctx)?;
        let info = ctx
            .get_token_info(slot)
            .map_err(self.ck("reading token info"))?;
        let session = self.session()?;
        let private = self.find_one(&session, ObjectClass::PRIVATE_KEY, "private key")?;
        let mut p = KeyProtection {
            token_label: info.label().trim_end().to_owned(),
            token_manufacturer: info.manufacturer_id().trim_end().to_owned(),
            token_model: info.model().trim_end().to_owned(),
            token_serial: info.serial_number().trim_end().to_owned(),
            sensitive: None,
            always_sensitive: None,
            extractable: None,
            never_extractable: None,
            local: None,
            private: None,
            sign: None,
            decrypt: None,
            unwrap: None,
            derive: None,
            allowed_mechanisms: None,
        };
        // Unavailable attributes are skipped by get_attributes, so a token
        // without CKA_ALLOWED_MECHANISMS still reports the others.
        let attrs = session
            .get_attributes(
                private,
                &[
                    AttributeType::Sensitive,
                    AttributeType::AlwaysSensitive,
                    AttributeType::Extractable,
                    AttributeType::NeverExtractable,
                    AttributeType::Local,
                    AttributeType::Private,
                    AttributeType::Sign,
                    AttributeType::Decrypt,
                    AttributeType::Unwrap,
                    AttributeType::Derive,
                    AttributeType::AllowedMechanisms,
                ],
            )
            .map_err(self.ck("reading the private key's attributes"))?;
        for a in attrs {
            match a {
                Attribute::Sensitive(v) => p.sensitive = Some(v),
                Attribute::AlwaysSensitive(v) => p.always_sensitive = Some(v),
                Attribute::Extractable(v) => p.extractable = Some(v),
                Attribute::NeverExtractable(v) => p.never_extractable = Some(v),
                Attribute::Local(v) => p.local = Some(v),
                Attribute::Private(v) => p.private = Some(v),
                Attribute::Sign(v) => p.sign = Some(v),
                Attribute::Decrypt(v) => p.decrypt = Some(v),
                Attribute::Unwrap(v) => p.unwrap = Some(v),
                Attribute::Derive(v) => p.derive = Some(v),
                Attribute::AllowedMechanisms(m) => {
                    p.allowed_mechanisms = Some(m.iter().map(|m| m.to_string()).collect())
                }
                _ => {}
            }
        }
        Ok(p)
    }
}

/// The content of a DER OCTET STRING of `len` bytes, or the bytes
/// themselves when a module returns the raw value (some do).
fn unwrap_octet_string(der: &[u8], len: usize) -> Option<Vec<u8>> {
    if der.len() == len + 2 && der[0] == 0x04 && der[1] as usize == len {
        return Some(der[2..].to_vec());
    }
    (der.len() == len).then(|| der.to_vec())
}

fn der_len(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
}

fn der_uint(value: &[u8], out: &mut Vec<u8>) {
    let trimmed: &[u8] = {
        let start = value
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(value.len().saturating_sub(1));
        &value[start..]
    };
    let pad = trimmed.first().is_none_or(|b| b & 0x80 != 0);
    out.push(0x02);
    der_len(trimmed.len() + usize::from(pad), out);
    if pad {
        out.push(0);
    }
    out.extend_from_slice(trimmed);
}

fn der_sequence(body: Vec<u8>) -> Vec<u8> {
    let mut out = vec![0x30];
    der_len(body.len(), &mut out);
    out.extend(body);
    out
}

/// PKCS#1 RSAPublicKey DER (what TUF's PEM SPKI wraps).
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    der_uint(n, &mut body);
    der_uint(e, &mut body);
    der_sequence(body)
}

/// PKCS#11 returns ECDSA signatures as raw r||s; TUF (and aws-lc-rs's
/// `ECDSA_P256_SHA256_ASN1`) expect the DER `Ecdsa-Sig-Value`.
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.len() != 64 {
        return None;
    }
    let mut body = Vec::new();
    der_uint(&raw[..32], &mut body);
    der_uint(&raw[32..], &mut body);
    Some(der_sequence(body))
}

/// One initialised context per module for the whole process: a second
/// `C_Initialize` of the same module fails, and finalising while another
/// signer still uses the module would break it.
fn context(module: &Path) -> std::result::Result<Pkcs11, String> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut map = CONTEXTS
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .map_err(|_| "PKCS#11 context lock poisoned".to_owned())?;
    if let Some(ctx) = map.get(module) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(module)
        .map_err(|e| format!("loading PKCS#11 module {}: {e}", module.display()))?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| format!("initialising PKCS#11 module {}: {e}", module.display()))?;
    map.insert(module.to_owned(), ctx.clone());
    Ok(ctx)
}

/// A logged-in handle on one private key in a token.
pub struct Pkcs11Signer {
    uri: Pkcs11Uri,
    public: Key,
    key_type: KeyType,
    private: ObjectHandle,
    // Sessions are not `Sync`; tough's `Sign` must be.
    session: Mutex<Session>,
}

impl fmt::Debug for Pkcs11Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Signer")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

impl Pkcs11Signer {
    pub fn sign_bytes(&self, msg: &[u8]) -> Result<Vec<u8>> {
        let session = self
            .session
            .lock()
            .map_err(|_| self.uri.error("session lock poisoned"))?;
        let sig = match self.key_type {
            KeyType::Ed25519 => session
                .sign(
                    &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                    self.private,
                    msg,
                )
                .map_err(self.uri.ck("signing (CKM_EDDSA)"))?,
            KeyType::Ecdsa => {
                // CKM_ECDSA signs a digest: hash on the host, as the scheme's SHA-256.
                let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, msg);
                let raw = session
                    .sign(&Mechanism::Ecdsa, self.private, digest.as_ref())
                    .map_err(self.uri.ck("signing (CKM_ECDSA)"))?;
                ecdsa_raw_to_der(&raw).ok_or_else(|| {
                    self.uri.error(format!(
                        "CKM_ECDSA returned {} bytes, expected 64",
                        raw.len()
                    ))
                })?
            }
            KeyType::Rsa => session
                .sign(
                    &Mechanism::Sha256RsaPkcsPss(PkcsPssParams {
                        hash_alg: MechanismType::SHA256,
                        mgf: PkcsMgfType::MGF1_SHA256,
                        s_len: 32u64.into(),
                    }),
                    self.private,
                    msg,
                )
                .map_err(self.uri.ck("signing (CKM_SHA256_RSA_PKCS_PSS)"))?,
        };
        Ok(sig)
    }
}

#[tough::async_trait]
impl Sign for Pkcs11Signer {
    fn tuf_key(&self) -> Key {
        self.public.clone()
    }

    async fn sign(
        &self,
        msg: &[u8],
        _rng: &(dyn aws_lc_rs::rand::SecureRandom + Sync),
    ) -> std::result::Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync + 'static>> {
        Ok(self.sign_bytes(msg)?)
    }
}

/// tough's key source for a key in a token.
#[derive(Debug, Clone)]
pub struct Pkcs11KeySource {
    pub uri: Pkcs11Uri,
}

#[tough::async_trait]
impl KeySource for Pkcs11KeySource {
    async fn as_sign(
        &self,
    ) -> std::result::Result<Box<dyn Sign>, Box<dyn std::error::Error + Send + Sync + 'static>>
    {
        Ok(Box::new(self.uri.signer()?))
    }

    async fn write(
        &self,
        _value: &str,
        _key_id_hex: &str,
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        Err(Box::new(
            self.uri
                .error("keys in a token are never written through tough"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_rfc7512_uris() {
        let u: Pkcs11Uri = "pkcs11:token=My%20Token;object=root-1;id=%01%ff?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin"
            .parse()
            .expect("parse");
        assert_eq!(u.token.as_deref(), Some("My Token"));
        assert_eq!(u.object.as_deref(), Some("root-1"));
        assert_eq!(u.id.as_deref(), Some(&[1u8, 0xff][..]));
        assert_eq!(u.pin_source, Some(PathBuf::from("/run/pin")));
        let again: Pkcs11Uri = u.to_string().parse().expect("reparse");
        assert_eq!(again, u);
        assert_eq!(u.describe(), "PKCS#11 token My Token, object root-1");
    }

    #[test]
    fn refuses_pins_and_incomplete_uris() {
        for bad in [
            "pkcs11:token=a;object=b?module-path=/m.so&pin-value=1234",
            "pkcs11:token=a;object=b;pin-value=1234?module-path=/m.so",
            "pkcs11:object=b?module-path=/m.so",
            "pkcs11:token=a?module-path=/m.so",
            "pkcs11:token=a;object=b",
            "pkcs11:token=a;object=b;id=%zz?module-path=/m.so",
            "file:/x",
        ] {
            assert!(bad.parse::<Pkcs11Uri>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn converts_raw_ecdsa_signatures_to_der() {
        let mut raw = [0u8; 64];
        raw[0] = 0x80; // r needs a leading zero
        raw[63] = 1; // s is 1 after stripping zeros
        let der = ecdsa_raw_to_der(&raw).expect("der");
        assert_eq!(&der[..4], &[0x30, 38, 0x02, 33]);
        assert_eq!(&der[der.len() - 3..], &[0x02, 1, 1]);
        assert!(ecdsa_raw_to_der(&[0; 63]).is_none());
    }
}
