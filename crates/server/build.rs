//! Records the git revision the binary is built from, for `tokenvend version`: from
//! `TOKENVEND_GIT_REVISION` when set (container builds have no `.git`), else from git.

fn main() {
    println!("cargo:rerun-if-env-changed=TOKENVEND_GIT_REVISION");
    let revision = std::env::var("TOKENVEND_GIT_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(|| {
            let out = std::process::Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    // Rebuild when HEAD moves (a commit or a checkout), not on every build.
    let git_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.git");
    for f in ["HEAD", "refs/heads"] {
        let p = git_dir.join(f);
        if p.exists() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
    println!("cargo:rustc-env=TOKENVEND_GIT_REVISION={revision}");
}
