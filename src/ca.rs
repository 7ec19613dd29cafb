//! `tracemesh ca`: make, serve and use the mesh's certificate authority.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use tracemesh_ca::authority::{Authority, PlugIn};
use tracemesh_ca::files::{write_private, write_public};
use tracemesh_ca::tokens::{Grant, Tokens};
use tracemesh_ca::{SpiffeId, server};

/// What `tracemesh ca` does.
#[derive(Subcommand)]
pub enum CaCommand {
    /// Make a CA in a directory: a new root, or an operator's root or
    /// intermediate plugged in (as Istio's cacerts).
    Init {
        /// Directory for the CA's files (the key is written mode 0600).
        #[arg(long)]
        dir: PathBuf,
        /// Trust domain of the identities it issues.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// Plug in this signing certificate instead of making a root.
        #[arg(long, requires = "signing_key")]
        signing_cert: Option<PathBuf>,
        /// The plugged-in certificate's key.
        #[arg(long, requires = "signing_cert")]
        signing_key: Option<PathBuf>,
        /// Chain from the plugged-in certificate up to the root.
        #[arg(long, requires = "signing_cert")]
        cert_chain: Option<PathBuf>,
        /// The root that peers trust, when the plugged-in certificate is an intermediate.
        #[arg(long, requires = "signing_cert")]
        root_cert: Option<PathBuf>,
    },
    /// Sign agents' certificate requests over HTTPS (bootstrap tokens decide
    /// who may have which identity).
    Serve {
        /// The CA's directory.
        #[arg(long)]
        dir: PathBuf,
        /// Address to listen on (port 0 picks one; the ready line says which).
        #[arg(long, default_value = "127.0.0.1:15012")]
        listen: SocketAddr,
    },
    /// Write a key and a certificate for one identity, for setups that mount
    /// files (as cert-manager does).
    Issue {
        /// The CA's directory.
        #[arg(long)]
        dir: PathBuf,
        /// The identity, `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
        #[arg(long)]
        spiffe: String,
        /// Directory to write `key.pem`, `cert-chain.pem`, `root-cert.pem` to.
        #[arg(long)]
        out: PathBuf,
        /// Validity (`24h`, `30m`).
        #[arg(long, default_value = "24h")]
        lifetime: String,
    },
    /// Add a bootstrap token and print it: `namespace/service-account`, or
    /// `*` for any identity of the trust domain.
    Token {
        /// The CA's directory.
        #[arg(long)]
        dir: PathBuf,
        /// Identity the token may ask for.
        #[arg(long)]
        identity: String,
    },
}

/// Runs a `tracemesh ca` command.
pub fn run(command: CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Init {
            dir,
            trust_domain,
            signing_cert,
            signing_key,
            cert_chain,
            root_cert,
        } => {
            let plug_in = signing_cert
                .zip(signing_key)
                .map(|(signing_cert, signing_key)| PlugIn {
                    signing_cert,
                    signing_key,
                    cert_chain,
                    root_cert,
                });
            Authority::init(&dir, &trust_domain, plug_in.as_ref())?;
            println!(
                "CA ready in {} (trust domain {trust_domain}); add tokens with `tracemesh ca token`",
                dir.display()
            );
            Ok(())
        }
        CaCommand::Serve { dir, listen } => serve(&dir, listen),
        CaCommand::Issue {
            dir,
            spiffe,
            out,
            lifetime,
        } => issue(&dir, &spiffe, &out, &lifetime),
        CaCommand::Token { dir, identity } => {
            let grant = Grant::parse(&identity)
                .context("identity must be namespace/service-account or *")?;
            println!("{}", Tokens::add(&dir, &grant)?);
            Ok(())
        }
    }
}

fn issue(dir: &Path, spiffe: &str, out: &Path, lifetime: &str) -> anyhow::Result<()> {
    let authority = Authority::load(dir)?;
    let id = SpiffeId::parse(spiffe)?;
    let lifetime: Duration = tracemesh_duration::parse(lifetime)?;
    let (key, issued) = authority.issue_with_key(&id, lifetime)?;
    std::fs::create_dir_all(out).with_context(|| out.display().to_string())?;
    write_private(&out.join("key.pem"), &key)?;
    write_public(&out.join("cert-chain.pem"), &issued.cert_chain)?;
    write_public(&out.join("root-cert.pem"), &issued.root_cert)?;
    println!("{id}: {}", out.display());
    Ok(())
}

fn serve(dir: &Path, listen: SocketAddr) -> anyhow::Result<()> {
    Ok(server::run(dir, listen)?)
}
