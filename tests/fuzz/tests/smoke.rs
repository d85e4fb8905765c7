//! Smoke run of every fuzz target, for CI: the seed corpus, then a few thousand
//! deterministic mutations of it, through the same entry functions libFuzzer calls.

use leash_fuzz::seeds::{all, mutate, Rng};

fn smoke(target: &str, mutations: usize) {
    let seeds = all(target);
    assert!(!seeds.is_empty(), "{target} has no seeds");
    for s in &seeds {
        leash_fuzz::run(target, s);
    }
    let mut rng = Rng::new(0x1ea5_0000 + target.len() as u64);
    for _ in 0..mutations {
        let seed = &seeds[rng.below(seeds.len())];
        let input = mutate(seed, &mut rng);
        leash_fuzz::run(target, &input);
    }
}

#[test]
fn policy() {
    smoke("policy", 2_000);
}

#[test]
fn config() {
    smoke("config", 5_000);
}

#[test]
fn join_token() {
    smoke("join_token", 5_000);
}

#[test]
fn agent_request() {
    smoke("agent_request", 5_000);
}

#[test]
fn cp_request() {
    smoke("cp_request", 3_000);
}

#[test]
fn reference() {
    smoke("reference", 20_000);
}

#[test]
fn envfile() {
    smoke("envfile", 20_000);
}

#[test]
fn http_query() {
    smoke("http_query", 20_000);
}

#[test]
fn every_target_has_a_smoke_test_and_a_corpus() {
    for t in leash_fuzz::TARGETS {
        assert!(
            leash_fuzz::seeds::corpus_dir(t).is_dir(),
            "corpus/{t} is missing"
        );
    }
}
