//! Every version comparator of the scanner against its ecosystem's own
//! implementation, on generated pairs (seeded, so a failure repeats):
//! `dpkg --compare-versions`, RPM's `rpm.vercmp` (through `rpm --eval`),
//! Python's `packaging` (PEP 440), npm's `semver`; and Alpine against the
//! comparison vectors of apk-tools' own test data
//! (tests/data/apk-version-pairs.txt).

#![cfg(feature = "scan")]
#![allow(clippy::unwrap_used)]

mod common;

use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth::ext::scan::version::{apk, dpkg, pep440, rpm, semver};

/// xorshift64*: deterministic pairs without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn random_string(rng: &mut Rng, alphabet: &[u8], min: usize, max: usize) -> String {
    let len = min + rng.below((max - min + 1) as u64) as usize;
    (0..len).map(|_| alphabet[rng.below(alphabet.len() as u64) as usize] as char).collect()
}

/// A second version close to the first: most pairs differ in one place,
/// which is where orderings disagree.
fn neighbour(rng: &mut Rng, v: &str, alphabet: &[u8]) -> String {
    let mut chars: Vec<char> = v.chars().collect();
    match rng.below(5) {
        0 => v.to_owned(),
        1 if chars.len() > 1 => {
            chars.pop();
            chars.into_iter().collect()
        }
        2 => {
            let i = rng.below(chars.len() as u64 + 1) as usize;
            chars.insert(i.max(1), alphabet[rng.below(alphabet.len() as u64) as usize] as char);
            chars.into_iter().collect()
        }
        _ => {
            let i = 1 + rng.below(chars.len().max(2) as u64 - 1) as usize;
            if i < chars.len() {
                chars[i] = alphabet[rng.below(alphabet.len() as u64) as usize] as char;
            }
            chars.into_iter().collect()
        }
    }
}

fn sign(o: Ordering) -> i32 {
    match o {
        Ordering::Less => -1,
        Ordering::Equal => 0,
        Ordering::Greater => 1,
    }
}

fn write_pairs(name: &str, pairs: &[(String, String)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    let text: String = pairs.iter().map(|(a, b)| format!("{a} {b}\n")).collect();
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn run(cmd: &mut Command) -> Vec<String> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (run scripts/install-test-deps)"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect()
}

/// Compare ours with the oracle's answers (`-1`, `0`, `1`, or `ERR` for a
/// version the oracle refuses); every disagreement is listed.
fn check(scheme: &str, pairs: &[(String, String)], oracle: &[String], ours: impl Fn(&str, &str) -> Option<Ordering>) {
    assert_eq!(oracle.len(), pairs.len(), "{scheme}: the oracle answered {} of {} pairs", oracle.len(), pairs.len());
    let mut wrong = Vec::new();
    let (mut less, mut equal, mut greater) = (0, 0, 0);
    for ((a, b), want) in pairs.iter().zip(oracle) {
        let got = match ours(a, b) {
            Some(o) => sign(o).to_string(),
            None => "ERR".to_owned(),
        };
        match want.as_str() {
            "-1" => less += 1,
            "0" => equal += 1,
            "1" => greater += 1,
            _ => {}
        }
        if &got != want {
            wrong.push(format!("{a} vs {b}: oracle {want}, berth {got}"));
        }
    }
    assert!(wrong.is_empty(), "{scheme}: {} of {} pairs disagree:\n{}", wrong.len(), pairs.len(), wrong.join("\n"));
    // The generated pairs cover every outcome, or the test proves little.
    assert!(less > 0 && equal > 0 && greater > 0, "{scheme}: <{less} ={equal} >{greater}");
    eprintln!("{scheme}: {} pairs agree (<{less} ={equal} >{greater})", pairs.len());
}

#[test]
fn dpkg_matches_dpkg_compare_versions() {
    let mut rng = Rng(0x5eed_0001);
    let alphabet = b"0123456789az.+~";
    let mut pairs = Vec::new();
    for _ in 0..1200 {
        let v = |rng: &mut Rng| {
            let mut s = String::new();
            if rng.chance(15) {
                s.push_str(&format!("{}:", rng.below(3)));
            }
            s.push_str(&rng.below(20).to_string());
            s.push_str(&random_string(rng, alphabet, 0, 6));
            if rng.chance(60) {
                s.push('-');
                s.push_str(&random_string(rng, b"0123456789a+.~", 1, 5));
            }
            s
        };
        let a = v(&mut rng);
        let b = if rng.chance(50) { neighbour(&mut rng, &a, alphabet) } else { v(&mut rng) };
        // Keep only what dpkg accepts (our parser says so; dpkg agrees or
        // the oracle answers ERR and the test fails).
        if dpkg::parse(&a).is_some() && dpkg::parse(&b).is_some() {
            pairs.push((a, b));
        }
    }
    for (a, b) in [("1.0~rc1", "1.0"), ("1:0", "2"), ("1.0-1", "1.0-1+b1"), ("2.36-9+deb12u4", "2.36-9+deb12u10")] {
        pairs.push((a.into(), b.into()));
    }
    let (_dir, file) = write_pairs("dpkg.txt", &pairs);
    let script = r#"while read -r a b; do
        if dpkg --compare-versions "$a" lt "$b"; then echo -1;
        elif dpkg --compare-versions "$a" eq "$b"; then echo 0;
        elif dpkg --compare-versions "$a" gt "$b"; then echo 1;
        else echo ERR; fi
    done < "$1""#;
    let oracle = run(Command::new("sh").args(["-c", script, "sh"]).arg(&file));
    check("dpkg", &pairs, &oracle, dpkg::compare);
}

#[test]
fn rpm_matches_rpm_vercmp() {
    let mut rng = Rng(0x5eed_0002);
    let alphabet = b"0123456789abz._~^";
    let mut pairs = Vec::new();
    for _ in 0..5000 {
        let v = |rng: &mut Rng| {
            let mut s = String::new();
            if rng.chance(15) {
                s.push_str(&format!("{}:", rng.below(3)));
            }
            s.push_str(&random_string(rng, alphabet, 1, 7));
            if rng.chance(50) {
                s.push('-');
                s.push_str(&random_string(rng, b"0123456789el._~^", 1, 5));
            }
            s
        };
        let a = v(&mut rng);
        let b = if rng.chance(50) { neighbour(&mut rng, &a, alphabet) } else { v(&mut rng) };
        if !a.contains(":-") && !b.contains(":-") && !a.ends_with(':') && !b.ends_with(':') {
            pairs.push((a, b));
        }
    }
    let (_dir, file) = write_pairs("rpm.txt", &pairs);
    let lua = format!(
        "%{{lua: for line in io.lines(\"{}\") do local a, b = line:match(\"^(%S+)%s+(%S+)$\"); \
         io.write(rpm.vercmp(a, b), \"\\n\") end}}",
        file.display()
    );
    let oracle = run(Command::new("rpm").arg("--eval").arg(lua));
    check("rpm", &pairs, &oracle, rpm::compare);
}

fn pep440_version(rng: &mut Rng) -> String {
    let mut s = String::new();
    if rng.chance(5) {
        s.push_str(rng.pick(&["v", "V"]));
    }
    if rng.chance(10) {
        s.push_str(&format!("{}!", rng.below(3)));
    }
    let parts = 1 + rng.below(4);
    let release: Vec<String> = (0..parts).map(|_| rng.pick(&["0", "1", "2", "10", "00", "01"]).to_owned()).collect();
    s.push_str(&release.join("."));
    let sep = |rng: &mut Rng| rng.pick(&["", "", ".", "-", "_"]).to_owned();
    let num = |rng: &mut Rng| if rng.chance(20) { String::new() } else { rng.below(12).to_string() };
    if rng.chance(40) {
        s.push_str(&sep(rng));
        s.push_str(rng.pick(&["a", "b", "rc", "alpha", "beta", "c", "pre", "preview", "RC"]));
        s.push_str(&sep(rng));
        s.push_str(&num(rng));
    }
    if rng.chance(30) {
        if rng.chance(30) {
            s.push_str(&format!("-{}", rng.below(5)));
        } else {
            s.push_str(&sep(rng));
            s.push_str(rng.pick(&["post", "rev", "r"]));
            s.push_str(&sep(rng));
            s.push_str(&num(rng));
        }
    }
    if rng.chance(30) {
        s.push_str(&sep(rng));
        s.push_str("dev");
        s.push_str(&num(rng));
    }
    if rng.chance(15) {
        s.push('+');
        let n = 1 + rng.below(3);
        let parts: Vec<&str> = (0..n).map(|_| rng.pick(&["1", "2", "10", "abc", "ubuntu", "x1"])).collect();
        s.push_str(&parts.join(rng.pick(&[".", "-", "_"])));
    }
    s
}

#[test]
fn pep440_matches_python_packaging() {
    let mut rng = Rng(0x5eed_0003);
    let mut pairs = Vec::new();
    for _ in 0..5000 {
        let a = pep440_version(&mut rng);
        let b = if rng.chance(30) {
            neighbour(&mut rng, &a, b"0123456789.abcdeprvt+-_!")
        } else {
            pep440_version(&mut rng)
        };
        pairs.push((a, b));
    }
    let (_dir, file) = write_pairs("pep440.txt", &pairs);
    let script = r#"
import sys
from packaging.version import Version, InvalidVersion
for line in open(sys.argv[1]):
    a, b = line.split()
    try:
        va, vb = Version(a), Version(b)
        print((va > vb) - (va < vb))
    except InvalidVersion:
        print("ERR")
"#;
    let oracle = run(Command::new(common::venv_python()).args(["-c", script]).arg(&file));
    check("pep440", &pairs, &oracle, pep440::compare);
}

fn semver_version(rng: &mut Rng) -> String {
    let mut s = String::new();
    if rng.chance(10) {
        s.push('v');
    }
    let n = |rng: &mut Rng| rng.pick(&["0", "1", "2", "10", "1234567"]).to_owned();
    s.push_str(&format!("{}.{}.{}", n(rng), n(rng), n(rng)));
    if rng.chance(50) {
        let k = 1 + rng.below(3);
        let ids: Vec<&str> =
            (0..k).map(|_| rng.pick(&["alpha", "beta", "rc", "0", "1", "2", "11", "x-y", "a1", "-"])).collect();
        s.push('-');
        s.push_str(&ids.join("."));
    }
    if rng.chance(15) {
        s.push_str(rng.pick(&["+build.1", "+20240101", "+x"]));
    }
    s
}

fn oracle_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/oracles/node_modules/semver")
}

#[test]
fn semver_matches_npm_semver() {
    let mut rng = Rng(0x5eed_0004);
    let mut pairs = Vec::new();
    for _ in 0..5000 {
        let a = semver_version(&mut rng);
        let b = if rng.chance(40) { neighbour(&mut rng, &a, b"0123456789.-abr") } else { semver_version(&mut rng) };
        pairs.push((a, b));
    }
    let (_dir, file) = write_pairs("semver.txt", &pairs);
    let semver_js = oracle_dir();
    assert!(semver_js.exists(), "{} is missing: run scripts/install-test-deps", semver_js.display());
    let script = r#"
const semver = require(process.argv[1]);
const out = [];
for (const line of require("fs").readFileSync(process.argv[2], "utf8").split("\n")) {
  const p = line.split(" ");
  if (p.length !== 2) continue;
  try { out.push(String(semver.compare(p[0], p[1], false))); } catch (e) { out.push("ERR"); }
}
process.stdout.write(out.join("\n") + "\n");
"#;
    let oracle = run(Command::new("node").args(["-e", script]).arg(&semver_js).arg(&file));
    // npm refuses leading zeros and numbers past 2^53; Go and Cargo are
    // stricter still, so a pair npm refuses is one neither publishes: only
    // pairs npm accepts are compared, and all of those must agree.
    let mut kept_pairs = Vec::new();
    let mut kept_oracle = Vec::new();
    for (p, o) in pairs.into_iter().zip(oracle) {
        if o != "ERR" {
            kept_pairs.push(p);
            kept_oracle.push(o);
        }
    }
    assert!(kept_pairs.len() > 3000, "only {} pairs npm accepts", kept_pairs.len());
    check("semver", &kept_pairs, &kept_oracle, semver::compare);
}

#[test]
fn apk_matches_apk_tools_vectors() {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/apk-version-pairs.txt"))
        .unwrap();
    let mut pairs = Vec::new();
    let mut oracle = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [a, op, b] = f.as_slice() else { panic!("bad line {line:?}") };
        pairs.push(((*a).to_owned(), (*b).to_owned()));
        oracle.push(
            match *op {
                "<" => "-1",
                "=" => "0",
                ">" => "1",
                other => panic!("bad operator {other}"),
            }
            .to_owned(),
        );
    }
    assert!(pairs.len() > 700, "{} vectors", pairs.len());
    // apk compares even malformed versions (two vectors have one); the
    // ordering itself is `apk::order`, `apk::compare` adds the validity check.
    check("apk", &pairs, &oracle, |a, b| Some(apk::order(a, b)));
}
