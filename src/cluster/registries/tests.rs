//! `spec.k3s.registries` read from real cluster files: what is accepted, how it renders, and
//! each mistake reported at its place.

use std::path::Path;

use crate::cluster::{parse, ClusterFile};

fn file(registries: &str) -> String {
    format!(
        "apiVersion: k3node.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: lab\nspec:\n  hosts:\n    - name: s1\n      address: 10.0.0.1\n      role: server\n  k3s:\n    registries:\n{registries}"
    )
}

/// The credentials of a rendered registries.yaml, as the helper finds them to scrub them.
fn credentials(text: &str) -> Vec<String> {
    crate::protocol::secret::registries_secrets(text).into_iter().map(|(_, v)| v).collect()
}

fn load(registries: &str) -> Result<ClusterFile, String> {
    parse("cluster.yaml", Path::new("/"), &file(registries)).map_err(|e| e.to_string())
}

#[test]
fn a_pasted_registries_yaml_renders_sorted_with_its_credentials_and_serializes_without_them() {
    let c = load(
        "      mirrors:\n        docker.io:\n          endpoint: [\"https://mirror.example:5000/\", \"http://10.0.0.9:5000\"]\n          rewrite:\n            \"^library/(.*)\": \"mirror/$1\"\n        \"*\": {}\n      configs:\n        mirror.example:5000:\n          auth: {username: ci, password: s3cret-pass}\n          tls: {ca_file: /etc/ssl/mirror.pem, insecure_skip_verify: false}\n",
    )
    .unwrap();
    let r = c.k3s.registries.as_ref().expect("read");
    let text = r.render("lab");
    assert_eq!(
        text,
        "# Written by k3node from the cluster file of cluster lab; edit that file, not this one.\n\
configs:\n  mirror.example:5000:\n    auth:\n      password: s3cret-pass\n      username: ci\n    tls:\n      ca_file: /etc/ssl/mirror.pem\nmirrors:\n  '*':\n    endpoint: []\n  docker.io:\n    endpoint:\n    - https://mirror.example:5000\n    - http://10.0.0.9:5000\n    rewrite:\n      ^library/(.*): mirror/$1\n"
    );
    assert_eq!(credentials(&text), ["s3cret-pass"]);
    let shown = serde_json::to_string(&c).unwrap();
    assert!(!shown.contains("s3cret-pass") && shown.contains("<redacted>"), "{shown}");
    assert_eq!(format!("{:?}", r).matches("s3cret").count(), 0);
    assert_eq!(
        crate::protocol::secret::registries_secrets(&text),
        [("configs/mirror.example:5000/auth/password".to_string(), "s3cret-pass".to_string())]
    );
}

#[test]
fn a_credential_from_the_environment_is_read_and_a_missing_one_is_named_at_its_line() {
    // Names unique to this test: the process environment is shared by every test.
    std::env::set_var("K3NODE_TEST_REGISTRY_PW_A", "from-the-env-pw");
    let c = load("      configs:\n        registry.example:\n          auth:\n            username: robot\n            password: {fromEnv: K3NODE_TEST_REGISTRY_PW_A}\n").unwrap();
    assert_eq!(credentials(&c.k3s.registries.unwrap().render("lab")), ["from-the-env-pw"]);

    let err = load("      configs:\n        registry.example:\n          auth:\n            username: robot\n            password: {fromEnv: K3NODE_TEST_REGISTRY_PW_UNSET}\n").unwrap_err();
    assert!(err.contains("cluster.yaml:16:"), "{err}");
    assert!(err.contains("the environment variable K3NODE_TEST_REGISTRY_PW_UNSET is not set"), "{err}");
    assert!(err.contains("export K3NODE_TEST_REGISTRY_PW_UNSET="), "{err}");
}

#[test]
fn each_mistake_is_reported_where_it_is_written() {
    let cases = [
        (
            "      mirrors:\n        https://docker.io: {endpoint: [\"https://m.example\"]}\n",
            "`https://docker.io`: a registry name has no scheme",
        ),
        ("      mirrors:\n        docker.io: {endpoint: [\"mirror.example:5000\"]}\n", "is not an http(s) URL"),
        (
            "      mirrors:\n        docker.io: {endpoints: [\"https://m.example\"]}\n",
            "unknown field `endpoints`, did you mean `endpoint`?",
        ),
        ("      configs:\n        r.example: {auth: {username: ci}}\n", "a username needs its password"),
        ("      configs:\n        r.example: {auth: {password: pw-only-here}}\n", "a password needs its username"),
        ("      configs:\n        r.example: {tls: {cert_file: /etc/c.pem}}\n", "cert_file and key_file go together"),
        (
            "      configs:\n        r.example: {tls: {ca_file: certs/ca.pem}}\n",
            "`certs/ca.pem` is not an absolute path",
        ),
        ("      configs:\n        r.example: {tls: {insecure_skip_verify: \"yes\"}}\n", "must be true or false"),
        (
            "      configs:\n        r.example: {auth: {username: u, password: {fromEnv: \"1BAD\"}}}\n",
            "is not an environment variable name",
        ),
        (
            "      mirrors:\n        docker.io:\n          endpoint: [\"https://m.example\"]\n          rewrite: {\"^library/(.*\": \"mirrored/$1\"}\n",
            "`^library/(.*` is not a regular expression: unclosed group (at character 10, `(.*`)",
        ),
        (
            "      mirrors:\n        docker.io:\n          endpoint: [\"https://m.example\"]\n          rewrite: {\"^a/(?P<x>.*)\\\\1\": \"b\"}\n",
            "is not a regular expression: backreferences are not supported",
        ),
        ("      {}\n", "registries needs mirrors, configs or both"),
    ];
    for (yaml, expected) in cases {
        let err = load(yaml).unwrap_err();
        assert!(err.contains(expected), "{yaml}: {err}");
        assert!(err.contains("cluster.yaml:1"), "a position: {err}");
        assert!(!err.contains("pw-only-here"), "a credential in an error: {err}");
    }
}
