//! The policy example in README.md's "Policy reference" is valid: `leakwarden policy check`
//! accepts it (documentation that does not parse is a bug).

use leakwarden_tests::{bin, describe, run, workspace_root};

#[test]
fn readme_policy_example_passes_policy_check() {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).expect("README.md");
    let section = readme
        .split("## Policy reference")
        .nth(1)
        .expect("a Policy reference section");
    let yaml = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("a yaml block in the Policy reference");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("readme-policy.yaml");
    std::fs::write(&file, yaml).expect("write");
    let mut cmd = std::process::Command::new(bin("leakwarden"));
    cmd.args(["policy", "check"]).arg(&file);
    let out = run(&mut cmd);
    assert!(out.status.success(), "{}", describe(&cmd, &out));
}
