//! `o1-relay certs`: what a first deployment needs. A CA (kept and reused
//! on later runs), the relay's certificate for the given names and
//! addresses, and an agent token; private files are written mode 0600.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

use crate::auth::{generate_token, hash_token};

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// What `generate` wrote.
#[derive(Debug)]
pub struct Generated {
    pub ca_cert: PathBuf,
    pub relay_cert: PathBuf,
    pub relay_key: PathBuf,
    pub token: String,
    pub token_sha256: String,
    pub reused_ca: bool,
}

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "o1 fleet CA");
    name.push(DnType::OrganizationName, "o1");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_after = rcgen::date_time_ymd(2046, 1, 1);
    Ok(params)
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CertsError> {
    let io = |source| CertsError::Io {
        path: path.to_owned(),
        source,
    };
    let _ = fs::remove_file(path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Writes `ca.crt`, `ca.key`, `relay.crt`, `relay.key` into `dir` for the
/// relay `names` (DNS names or IP addresses), and makes a token.
pub fn generate(dir: &Path, names: &[String]) -> Result<Generated, CertsError> {
    fs::create_dir_all(dir).map_err(|source| CertsError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let ca_cert_path = dir.join("ca.crt");
    let ca_key_path = dir.join("ca.key");
    let existing = fs::read_to_string(&ca_key_path)
        .ok()
        .and_then(|pem| KeyPair::from_pem(&pem).ok());
    let reused_ca = existing.is_some() && ca_cert_path.exists();
    let issuer = match existing {
        Some(ca_key) if reused_ca => Issuer::new(ca_params()?, ca_key),
        _ => {
            let ca_key = KeyPair::generate()?;
            let key_pem = ca_key.serialize_pem();
            let ca = CertifiedIssuer::self_signed(ca_params()?, ca_key)?;
            write_file(&ca_key_path, &key_pem, 0o600)?;
            write_file(&ca_cert_path, &ca.pem(), 0o644)?;
            Issuer::new(ca_params()?, KeyPair::from_pem(&key_pem)?)
        }
    };
    let mut params = CertificateParams::new(names.to_vec())?;
    let mut name = DistinguishedName::new();
    name.push(
        DnType::CommonName,
        names.first().map_or("o1-relay", String::as_str),
    );
    params.distinguished_name = name;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let relay_key = KeyPair::generate()?;
    let relay_cert = params.signed_by(&relay_key, &issuer)?;
    let relay_cert_path = dir.join("relay.crt");
    let relay_key_path = dir.join("relay.key");
    write_file(&relay_key_path, &relay_key.serialize_pem(), 0o600)?;
    write_file(&relay_cert_path, &relay_cert.pem(), 0o644)?;
    let token = generate_token();
    let token_sha256 = hash_token(&token);
    Ok(Generated {
        ca_cert: ca_cert_path,
        relay_cert: relay_cert_path,
        relay_key: relay_key_path,
        token,
        token_sha256,
        reused_ca,
    })
}

/// What `issue_agent` wrote.
#[derive(Debug)]
pub struct AgentCertificate {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca_cert: PathBuf,
}

/// Issues a client certificate for agent `host` from the CA in `dir`
/// (made by [`generate`]): `agents/<host>.crt` and `.key`. Its name is the
/// host, so the relay knows the agent by it (`uplink.client_ca`).
pub fn issue_agent(dir: &Path, host: &str) -> Result<AgentCertificate, CertsError> {
    let ca_cert_path = dir.join("ca.crt");
    let ca_key_path = dir.join("ca.key");
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| CertsError::Io { path, source }
    };
    let ca_key = KeyPair::from_pem(&fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?)?;
    if !ca_cert_path.exists() {
        return Err(CertsError::Io {
            path: ca_cert_path,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no CA here: run `o1-relay certs --name …` first",
            ),
        });
    }
    let issuer = Issuer::new(ca_params()?, ca_key);
    let mut params = CertificateParams::new(vec![host.to_owned()])?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, host);
    params.distinguished_name = name;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let agents = dir.join("agents");
    fs::create_dir_all(&agents).map_err(io(&agents))?;
    let cert_path = agents.join(format!("{host}.crt"));
    let key_path = agents.join(format!("{host}.key"));
    write_file(&key_path, &key.serialize_pem(), 0o600)?;
    write_file(&cert_path, &cert.pem(), 0o644)?;
    Ok(AgentCertificate {
        cert: cert_path,
        key: key_path,
        ca_cert: ca_cert_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_private_files_0600_and_reuses_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let first = generate(dir.path(), &["localhost".into(), "127.0.0.1".into()]).unwrap();
        assert!(!first.reused_ca);
        for private in ["ca.key", "relay.key"] {
            let mode = fs::metadata(dir.path().join(private))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{private}");
        }
        let ca_before = fs::read(&first.ca_cert).unwrap();
        let second = generate(dir.path(), &["relay.example".into()]).unwrap();
        assert!(second.reused_ca);
        assert_eq!(fs::read(&second.ca_cert).unwrap(), ca_before);
        assert_ne!(first.token, second.token);
        let agent = issue_agent(dir.path(), "web-01").unwrap();
        assert!(agent.cert.ends_with("agents/web-01.crt"));
        let mode = fs::metadata(&agent.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let empty = tempfile::tempdir().unwrap();
        assert!(
            issue_agent(empty.path(), "web-01").is_err(),
            "no CA, no certificate"
        );
    }
}
