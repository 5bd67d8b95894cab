//! Desired-state files: the broken corpus, merging, duplicates, expiry, `validate` output, the
//! example file, the git commit id, and parser robustness.

use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use dexscope::desired::{
    self, DeviceKey, Mode, Severity, UserKey, ValidateFormat, validate_command,
};
use expect_test::{Expect, expect};
use proptest::prelude::*;

const BROKEN: &str = "tests/data/desired/broken";

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 6, 1).unwrap()
}

/// Runs `validate` (text) on `paths` and returns the exit code and the output.
fn validate(paths: &[&str], format: ValidateFormat) -> (i32, String) {
    let paths: Vec<PathBuf> = paths.iter().map(PathBuf::from).collect();
    let mut out = Vec::new();
    let code = validate_command(&paths, format, today(), &mut out);
    (code, String::from_utf8(out).unwrap())
}

// ---------------------------------------------------------------------------------------------
// The broken corpus: one defect per file, each with its exact message and position.

/// Parses a corpus file through the library (pure parser) and renders every diagnostic.
fn check_broken(name: &str, expected: Expect) {
    let path = Path::new(BROKEN).join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let name = PathBuf::from(format!("broken/{name}"));
    let err = desired::parse_str(&name, &text, today(), Mode::Strict)
        .expect_err("a broken file must not validate");
    let errors: Vec<_> = err.errors().collect();
    assert_eq!(errors.len(), 1, "{name:?} has one defect: {errors:#?}");
    let rendered: Vec<String> = err.0.iter().map(ToString::to_string).collect();
    expected.assert_eq(&rendered.join("\n"));
}

/// Every file in the corpus, with what `validate` must say about it.
fn broken_cases() -> Vec<(&'static str, Expect)> {
    vec![
        (
            "syntax-unclosed-string.toml",
            expect![[
                r#"broken/syntax-unclosed-string.toml:2:22: error: invalid TOML: invalid basic string, expected `"`; fix the syntax here (nothing else in this file was checked)"#
            ]],
        ),
        (
            "syntax-missing-equals.toml",
            expect![
                "broken/syntax-missing-equals.toml:1:7: error: invalid TOML: key with no value, expected `=`; fix the syntax here (nothing else in this file was checked)"
            ],
        ),
        (
            "syntax-duplicate-key.toml",
            expect![
                "broken/syntax-duplicate-key.toml:2:1: error: invalid TOML: duplicate key; fix the syntax here (nothing else in this file was checked)"
            ],
        ),
        (
            "unknown-top-level-key.toml",
            expect![
                "broken/unknown-top-level-key.toml:1:1: error: unknown top-level key `user` (did you mean `users`?); allowed keys: users, devices, exclude_users, exclude_devices, allow_empty"
            ],
        ),
        (
            "unknown-user-key.toml",
            expect![
                "broken/unknown-user-key.toml:2:32: error: unknown key `owner` in a user entry; allowed keys: upn, id, note, expires"
            ],
        ),
        (
            "device-dns-name-key.toml",
            expect![
                "broken/device-dns-name-key.toml:2:5: error: unknown key `dns_name` in a device entry (did you mean `name`?); allowed keys: id, aad_device_id, name, note, expires"
            ],
        ),
        (
            "users-not-array.toml",
            expect![[
                r#"broken/users-not-array.toml:1:9: error: `users` must be an array of entries, found a string; write it like users = ["alice@contoso.com"]"#
            ]],
        ),
        (
            "users-table.toml",
            expect![[
                r#"broken/users-table.toml:1:1: error: `users` must be an array of entries, found a table; write it like users = ["alice@contoso.com"]"#
            ]],
        ),
        (
            "entry-wrong-type.toml",
            expect![
                "broken/entry-wrong-type.toml:1:31: error: a user entry must be a string or an inline table, found an integer"
            ],
        ),
        (
            "malformed-upn.toml",
            expect![[
                r#"broken/malformed-upn.toml:2:11: error: "alice@contoso" is not a valid UPN: a user principal name like alice@contoso.com"#
            ]],
        ),
        (
            "bare-user-neither.toml",
            expect![[
                r#"broken/bare-user-neither.toml:1:31: error: "bob" is neither a user principal name nor an object id: write a UPN like alice@contoso.com or an Entra object id like 6f1c2a9e-0b7d-4a57-9a51-2d9f0c3e7b14"#
            ]],
        ),
        (
            "malformed-user-guid.toml",
            expect![[
                r#"broken/malformed-user-guid.toml:2:10: error: "6f1c2a9e-0b7d-4a57-9a51-2d9f0c3e7b1" is not a valid user object id: a GUID like 6f1c2a9e-0b7d-4a57-9a51-2d9f0c3e7b14"#
            ]],
        ),
        (
            "upn-in-id-key.toml",
            expect![[
                r#"broken/upn-in-id-key.toml:2:10: error: "alice@contoso.com" is not a valid user object id: a GUID like 6f1c2a9e-0b7d-4a57-9a51-2d9f0c3e7b14; for a UPN write upn = "alice@contoso.com""#
            ]],
        ),
        (
            "malformed-machine-id.toml",
            expect![[
                r#"broken/malformed-machine-id.toml:2:10: error: "73e7e2de709dff64ef64b1d0c30e67fab63279dz" is not a valid MDE machine id: 40 hex digits like 73e7e2de709dff64ef64b1d0c30e67fab63279db"#
            ]],
        ),
        (
            "guid-in-machine-id-key.toml",
            expect![[
                r#"broken/guid-in-machine-id-key.toml:2:10: error: "1a2b3c4d-1111-2222-3333-444455556666" is not a valid MDE machine id: 40 hex digits like 73e7e2de709dff64ef64b1d0c30e67fab63279db; for an Entra device id write aad_device_id = "1a2b3c4d-1111-2222-3333-444455556666""#
            ]],
        ),
        (
            "bare-mistyped-id.toml",
            expect![[
                r#"broken/bare-mistyped-id.toml:3:3: error: "73e7e2de709dff64ef64b1d0c30e67fab63279d" looks like a mistyped id: an MDE machine id is 40 hex digits like 73e7e2de709dff64ef64b1d0c30e67fab63279db and an Entra device id a GUID like 1a2b3c4d-1111-2222-3333-444455556666"#
            ]],
        ),
        (
            "malformed-dns-name.toml",
            expect![[
                r#"broken/malformed-dns-name.toml:1:12: error: "ws ber 0012" is not a valid device DNS name: a host name like ws-ber-0012.contoso.local, or an MDE machine id (40 hex digits), or an Entra device id (a GUID)"#
            ]],
        ),
        (
            "two-identifying-keys.toml",
            expect![
                "broken/two-identifying-keys.toml:2:32: error: a user entry has both `upn` and `id`; keep exactly one of `upn` or `id` (write two entries for two users)"
            ],
        ),
        (
            "no-identifying-key.toml",
            expect![
                "broken/no-identifying-key.toml:2:3: error: a device entry needs one identifying key: `id` or `aad_device_id` or `name`"
            ],
        ),
        (
            "duplicate-user.toml",
            expect![
                "broken/duplicate-user.toml:4:3: error: duplicate user alice@contoso.com: already listed at broken/duplicate-user.toml:2:3; remove one of the two entries"
            ],
        ),
        (
            "duplicate-upn-case.toml",
            expect![
                "broken/duplicate-upn-case.toml:1:29: error: duplicate user ann@contoso.com: already listed at broken/duplicate-upn-case.toml:1:10; remove one of the two entries"
            ],
        ),
        (
            "duplicate-machine-id-case.toml",
            expect![
                "broken/duplicate-machine-id-case.toml:3:3: error: duplicate device 73e7e2de709dff64ef64b1d0c30e67fab63279db: already listed at broken/duplicate-machine-id-case.toml:2:3; remove one of the two entries"
            ],
        ),
        (
            "expired.toml",
            expect![
                "broken/expired.toml:3:40: error: user bob@contoso.com expired on 2026-05-01: remove the entry, or set a later `expires` if it should stay in scope"
            ],
        ),
        (
            "expires-string.toml",
            expect![
                "broken/expires-string.toml:2:40: error: `expires` must be a date like 2027-03-31, found a string; write it without quotes: expires = 2099-01-01"
            ],
        ),
        (
            "expires-datetime.toml",
            expect![
                "broken/expires-datetime.toml:2:40: error: `expires` must be a date like 2027-03-31, found a date-time"
            ],
        ),
        (
            "note-not-string.toml",
            expect![
                "broken/note-not-string.toml:2:37: error: `note` must be a string, found an integer"
            ],
        ),
        (
            "allow-empty-string.toml",
            expect![
                "broken/allow-empty-string.toml:2:15: error: `allow_empty` must be true or false, found a string"
            ],
        ),
        (
            "empty-lists.toml",
            expect![
                "broken/empty-lists.toml:2:1: error: the desired state lists no users and no devices; an empty desired state is refused so that a broken file never removes everyone from scope: add `allow_empty = true` if removing everyone is really meant"
            ],
        ),
        (
            "selector-unknown-key.toml",
            expect![
                "broken/selector-unknown-key.toml:2:53: error: unknown key `nte` in a user selector (did you mean `note`?); allowed keys: group, where, note, include_disabled"
            ],
        ),
        (
            "selector-group-not-guid.toml",
            expect![[
                r#"broken/selector-group-not-guid.toml:2:13: error: `group` must be the object id of an Entra group, a GUID like 5e2c6a0d-8f3b-4c1e-9a7d-2b6f0e4c8a13, found "Berlin-Staff"; group names are not unique, so a selector names its group by id (Entra admin center › Groups › Object ID)"#
            ]],
        ),
        (
            "selector-empty-where.toml",
            expect![[
                r#"broken/selector-empty-where.toml:3:13: error: `where` is empty: it would select every device; name at least one condition, like { name_prefix = "srv-ber-", os = ["WindowsServer2022"] }"#
            ]],
        ),
        (
            "selector-unknown-where-key.toml",
            expect![
                "broken/selector-unknown-where-key.toml:2:15: error: unknown `where` key `departmnt` for users (did you mean `department`?); allowed keys: department, country, company_name, job_title, office_location, usage_location, employee_type"
            ],
        ),
        (
            "excluded-and-listed.toml",
            expect![
                "broken/excluded-and-listed.toml:5:18: error: user ceo@contoso.com is both listed in `users` at broken/excluded-and-listed.toml:2:3 and excluded in `exclude_users` here; remove one of the two (an exclusion only takes identities out of what selectors yield)"
            ],
        ),
        (
            "selector-in-exclusion.toml",
            expect![
                "broken/selector-in-exclusion.toml:2:18: error: `exclude_users` takes single users only, not a selector; exclude the identities one by one"
            ],
        ),
        (
            "comments-only.toml",
            expect![
                "broken/comments-only.toml:1:1: error: the desired state lists no users and no devices; an empty desired state is refused so that a broken file never removes everyone from scope: add `allow_empty = true` if removing everyone is really meant"
            ],
        ),
    ]
}

#[test]
fn broken_corpus_reports_each_defect_with_position() {
    for (name, expected) in broken_cases() {
        check_broken(name, expected);
    }
}

#[test]
fn broken_corpus_and_table_list_the_same_files() {
    let mut on_disk: Vec<String> = std::fs::read_dir(BROKEN)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    on_disk.sort();
    let mut in_table: Vec<String> = broken_cases()
        .into_iter()
        .map(|(n, _)| n.to_string())
        .collect();
    in_table.sort();
    assert_eq!(on_disk, in_table);
    assert!(on_disk.len() >= 20);
}

#[test]
fn validate_text_output_for_broken_files() {
    let check = |paths: &[&str], expected: Expect| {
        let (code, out) = validate(paths, ValidateFormat::Text);
        assert_eq!(code, 1);
        expected.assert_eq(&out);
    };
    check(
        &["tests/data/desired/broken/malformed-upn.toml"],
        expect![[r#"
            tests/data/desired/broken/malformed-upn.toml:2:11: error: "alice@contoso" is not a valid UPN: a user principal name like alice@contoso.com
            1 error, 0 warnings in 1 file
        "#]],
    );
    check(
        &["tests/data/desired/broken/expired.toml"],
        expect![[r#"
        tests/data/desired/broken/expired.toml:3:40: error: user bob@contoso.com expired on 2026-05-01: remove the entry, or set a later `expires` if it should stay in scope
        1 error, 0 warnings in 1 file
    "#]],
    );
    check(
        &["tests/data/desired/broken/empty-lists.toml"],
        expect![[r#"
            tests/data/desired/broken/empty-lists.toml:2:1: error: the desired state lists no users and no devices; an empty desired state is refused so that a broken file never removes everyone from scope: add `allow_empty = true` if removing everyone is really meant
            1 error, 0 warnings in 1 file
        "#]],
    );
    // Several broken files together: every problem, in file order.
    check(
        &[
            "tests/data/desired/broken/syntax-unclosed-string.toml",
            "tests/data/desired/broken/unknown-top-level-key.toml",
            "tests/data/desired/broken/duplicate-user.toml",
        ],
        expect![[r#"
            tests/data/desired/broken/syntax-unclosed-string.toml:2:22: error: invalid TOML: invalid basic string, expected `"`; fix the syntax here (nothing else in this file was checked)
            tests/data/desired/broken/unknown-top-level-key.toml:1:1: error: unknown top-level key `user` (did you mean `users`?); allowed keys: users, devices, exclude_users, exclude_devices, allow_empty
            tests/data/desired/broken/duplicate-user.toml:4:3: error: duplicate user alice@contoso.com: already listed at tests/data/desired/broken/duplicate-user.toml:2:3; remove one of the two entries
            3 errors, 0 warnings in 3 files
        "#]],
    );
}

#[test]
fn validate_reports_a_missing_path_by_name() {
    let (code, out) = validate(
        &[
            "tests/data/desired/no-such-file.toml",
            "config/scope.example.toml",
        ],
        ValidateFormat::Text,
    );
    assert_eq!(code, 1);
    expect![[r#"
        tests/data/desired/no-such-file.toml: error: desired-state path does not exist: check the path (a .toml file or a directory of them)
        1 error, 0 warnings in 1 file
    "#]].assert_eq(&out);
}

#[test]
fn validate_json_output() {
    let (code, out) = validate(
        &["tests/data/desired/broken/malformed-upn.toml"],
        ValidateFormat::Json,
    );
    assert_eq!(code, 1);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    expect![[r#"{"devices":0,"diagnostics":[{"col":11,"file":"tests/data/desired/broken/malformed-upn.toml","line":2,"message":"\"alice@contoso\" is not a valid UPN: a user principal name like alice@contoso.com","severity":"error"}],"users":0,"valid":false}"#]].assert_eq(&serde_json::to_string(&doc).unwrap());

    let (code, out) = validate(&["config/scope.example.toml"], ValidateFormat::Json);
    assert_eq!(code, 0);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["valid"], true);
    assert_eq!(doc["users"], 5);
    assert_eq!(doc["devices"], 6);
    assert_eq!(doc["diagnostics"], serde_json::json!([]));
}

#[test]
fn validate_github_annotations() {
    let (code, out) = validate(
        &[
            "tests/data/desired/broken/duplicate-user.toml",
            "tests/data/desired/missing,dir",
        ],
        ValidateFormat::Github,
    );
    assert_eq!(code, 1);
    expect![[r#"
        ::error file=tests/data/desired/missing%2Cdir::desired-state path does not exist: check the path (a .toml file or a directory of them)
        ::error file=tests/data/desired/broken/duplicate-user.toml,line=4,col=3::duplicate user alice@contoso.com: already listed at tests/data/desired/broken/duplicate-user.toml:2:3; remove one of the two entries
        2 errors, 0 warnings in 1 file
    "#]].assert_eq(&out);
}

// ---------------------------------------------------------------------------------------------
// Merging files and directories.

#[test]
fn the_same_user_in_two_files_names_both_places() {
    let (code, out) = validate(
        &[
            "tests/data/desired/across/berlin.toml",
            "tests/data/desired/across/paris.toml",
        ],
        ValidateFormat::Text,
    );
    assert_eq!(code, 1);
    expect![[r#"
        tests/data/desired/across/paris.toml:4:3: error: duplicate user ann@contoso.com: already listed at tests/data/desired/across/berlin.toml:3:3; remove one of the two entries
        1 error, 0 warnings in 2 files
    "#]].assert_eq(&out);
}

#[test]
fn a_directory_is_the_same_as_its_files() {
    let (code, out) = validate(&["tests/data/desired/across"], ValidateFormat::Text);
    assert_eq!(code, 1);
    assert!(
        out.contains("across/paris.toml:4:3: error: duplicate user ann@contoso.com: already listed at tests/data/desired/across/berlin.toml:3:3"),
        "{out}"
    );
}

#[test]
fn directory_merge_takes_toml_files_in_name_order() {
    let dir = PathBuf::from("tests/data/desired/merge");
    let loaded = desired::load(std::slice::from_ref(&dir), today(), Mode::Strict).unwrap();
    assert_eq!(
        loaded.state.sources,
        vec![dir.join("10-paris.toml"), dir.join("20-berlin.toml")],
        "README.md, the hidden draft and the subdirectory are not read"
    );
    let users: Vec<String> = loaded
        .state
        .users
        .iter()
        .map(|u| format!("{} {:?} {}", u.key, u.note, u.at))
        .collect();
    expect![[r#"
        [
            "6f1c2a9e-0b7d-4a57-9a51-2d9f0c3e7b14 Some(\"CFO\") tests/data/desired/merge/10-paris.toml:2:10",
            "alice@contoso.com None tests/data/desired/merge/20-berlin.toml:2:10",
            "bob@contoso.com Some(\"SOC handover\") tests/data/desired/merge/20-berlin.toml:2:31",
        ]
    "#]].assert_debug_eq(&users);
    let devices: Vec<&DeviceKey> = loaded.state.devices.iter().map(|d| &d.key).collect();
    expect![[r#"
        [
            Machine(
                MachineId(
                    "73e7e2de709dff64ef64b1d0c30e67fab63279db",
                ),
            ),
            Name(
                DnsName(
                    "ws-ber-0012.contoso.local",
                ),
            ),
        ]
    "#]]
    .assert_debug_eq(&devices);
    assert!(loaded.warnings.is_empty());
}

#[test]
fn naming_a_file_twice_reads_it_once() {
    let paths = [
        PathBuf::from("tests/data/desired/merge"),
        PathBuf::from("tests/data/desired/merge/10-paris.toml"),
    ];
    let loaded = desired::load(&paths, today(), Mode::Strict).unwrap();
    assert_eq!(loaded.state.sources.len(), 2);
}

#[test]
fn an_empty_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not toml").unwrap();
    let err = desired::load(&[dir.path().to_path_buf()], today(), Mode::Strict).unwrap_err();
    let messages: Vec<&str> = err.errors().map(|d| d.message.as_str()).collect();
    assert_eq!(
        messages,
        ["desired-state directory holds no .toml files: add one, or name the file directly"]
    );
}

// ---------------------------------------------------------------------------------------------
// Expiry and emptiness.

const EXPIRING: &str = r#"users = [
  "alice@contoso.com",
  { upn = "bob@contoso.com", expires = 2026-06-10 },
  { upn = "carol@contoso.com", expires = 2026-06-16 },
  { upn = "dave@contoso.com", expires = 2026-06-15 },
]
"#;

#[test]
fn an_entry_expiring_within_14_days_warns_but_does_not_fail() {
    let loaded = desired::parse_str(Path::new("x.toml"), EXPIRING, today(), Mode::Strict).unwrap();
    assert_eq!(loaded.state.users.len(), 4);
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    expect![[r#"
        [
            "x.toml:3:40: warning: user bob@contoso.com expires on 2026-06-10, in 9 days: set a later `expires` if it should stay in scope",
            "x.toml:5:41: warning: user dave@contoso.com expires on 2026-06-15, in 14 days: set a later `expires` if it should stay in scope",
        ]
    "#]].assert_debug_eq(&warnings);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scope.toml");
    std::fs::write(&file, EXPIRING).unwrap();
    let mut out = Vec::new();
    let code = validate_command(&[file], ValidateFormat::Text, today(), &mut out);
    assert_eq!(code, 0);
    let out = String::from_utf8(out).unwrap();
    assert!(out.ends_with("0 errors, 2 warnings in 1 file\n"), "{out}");
}

#[test]
fn expired_entries_fail_strict_and_leave_scope_at_runtime() {
    // From the day of `expires` on, the entry is out of scope.
    let day = |d| NaiveDate::from_ymd_opt(2026, 6, d).unwrap();
    let cases = [
        (day(9), Mode::Strict, Ok(4), 3),
        (day(10), Mode::Strict, Err(1), 0),
        (day(10), Mode::Runtime, Ok(3), 3),
        (day(20), Mode::Runtime, Ok(1), 3),
        (day(20), Mode::Strict, Err(3), 0),
    ];
    for (today, mode, want, want_warnings) in cases {
        let got = desired::parse_str(Path::new("x.toml"), EXPIRING, today, mode);
        match (got, want) {
            (Ok(loaded), Ok(users)) => {
                assert_eq!(loaded.state.users.len(), users, "{today} {mode:?}");
                assert_eq!(loaded.warnings.len(), want_warnings, "{today} {mode:?}");
                assert!(
                    loaded
                        .warnings
                        .iter()
                        .all(|w| w.severity == Severity::Warning)
                );
            }
            (Err(e), Err(errors)) => assert_eq!(e.errors().count(), errors, "{today} {mode:?}"),
            (got, want) => panic!("{today} {mode:?}: got {got:?}, want {want:?}"),
        }
    }
    let loaded = desired::parse_str(Path::new("x.toml"), EXPIRING, day(10), Mode::Runtime).unwrap();
    expect!["x.toml:3:40: warning: user bob@contoso.com expired on 2026-06-10 and is out of scope: remove the entry, or set a later `expires` if it should stay in scope"].assert_eq(&loaded.warnings[0].to_string());
}

#[test]
fn everything_expired_at_runtime_is_an_empty_state_not_a_mass_removal() {
    let text = "users = [{ upn = \"a@contoso.com\", expires = 2026-01-01 }]\n";
    let err = desired::parse_str(Path::new("x.toml"), text, today(), Mode::Runtime).unwrap_err();
    let rendered: Vec<String> = err.0.iter().map(ToString::to_string).collect();
    expect![[r#"
        [
            "x.toml:1:1: error: the desired state has no users and no devices left in scope (1 expired); an empty desired state is refused so that a broken file never removes everyone from scope: add `allow_empty = true` if removing everyone is really meant",
            "x.toml:1:45: warning: user a@contoso.com expired on 2026-01-01 and is out of scope: remove the entry, or set a later `expires` if it should stay in scope",
        ]
    "#]].assert_debug_eq(&rendered);

    let allowed = format!("allow_empty = true\n{text}");
    let loaded = desired::parse_str(Path::new("x.toml"), &allowed, today(), Mode::Runtime).unwrap();
    assert!(loaded.state.is_empty());
    assert!(loaded.state.allow_empty);
}

#[test]
fn an_entry_less_file_of_a_directory_is_refused_unless_it_allows_empty() {
    let listed = (Path::new("a.toml"), "users = [\"ann@contoso.com\"]\n");
    let zero_bytes = (Path::new("b.toml"), "");
    let empty_list = (Path::new("c.toml"), "users = []\n");
    let allowed = (Path::new("d.toml"), "allow_empty = true\n");
    for (broken, line) in [(zero_bytes, 1), (empty_list, 1)] {
        for mode in [Mode::Strict, Mode::Runtime] {
            let outcome = desired::parse_files(&[listed, broken], today(), mode);
            let errors: Vec<String> = outcome
                .diagnostics
                .iter()
                .filter(|d| d.is_error())
                .map(|d| d.to_string())
                .collect();
            assert_eq!(
                errors,
                [format!(
                    "{}:{line}:1: error: this file lists no users and no devices; a file that \
                     lists nothing is refused so that a file caught half-written never takes its \
                     entries out of scope: add `allow_empty = true` if the file is meant to be \
                     empty",
                    broken.0.display()
                )]
            );
        }
    }
    let outcome = desired::parse_files(&[listed, allowed], today(), Mode::Strict);
    assert!(outcome.is_valid(), "{:?}", outcome.diagnostics);
    // Every file empty and one of them allowing it: still refused, the other did not say so.
    let outcome = desired::parse_files(&[empty_list, allowed], today(), Mode::Strict);
    assert!(!outcome.is_valid());
    let outcome = desired::parse_files(&[allowed], today(), Mode::Strict);
    assert!(outcome.is_valid(), "{:?}", outcome.diagnostics);
}

// ---------------------------------------------------------------------------------------------
// Selectors.

/// The selector forms of the README, parsed into sources; `expires` is refused on a selector
/// and a condition list is order-independent (the same selector twice is a duplicate).
#[test]
fn selectors_parse_into_sources_and_duplicates_are_found_whatever_the_order() {
    let text = r#"
users = [
  "alice@contoso.com",
  { group = "5E2C6A0D-8F3B-4C1E-9A7D-2B6F0E4C8A13", note = "Berlin-Staff" },
  { where = { department = "Finance", country = "DE" } },
  { group = "7d0f3b52-6a1e-4c9d-8b2f-1e5a7c3d9f04", include_disabled = true },
]
devices = [
  { where = { name_prefix = "srv-ber-", os = ["WindowsServer2019", "WindowsServer2022"] } },
  { where = { tag = "Berlin" } },
  { group = "9a1f2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b", note = "Entra device group" },
]
exclude_users = ["ceo@contoso.com"]
exclude_devices = ["ws-ber-0099.contoso.local"]
"#;
    let loaded = desired::parse_str(Path::new("s.toml"), text, today(), Mode::Strict).unwrap();
    let keys: Vec<String> = loaded.state.selectors.iter().map(|s| s.key()).collect();
    expect![[r#"
        [
            "users: group 5e2c6a0d-8f3b-4c1e-9a7d-2b6f0e4c8a13",
            "users: where country = DE, department = Finance",
            "users: group 7d0f3b52-6a1e-4c9d-8b2f-1e5a7c3d9f04 +disabled",
            "devices: where name_prefix = srv-ber-, os in (WindowsServer2019, WindowsServer2022)",
            "devices: where tag = Berlin",
            "devices: group 9a1f2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b",
        ]
    "#]]
    .assert_debug_eq(&keys);
    assert_eq!(loaded.state.users.len(), 1);
    assert_eq!(loaded.state.exclude_users.len(), 1);
    assert_eq!(loaded.state.exclude_devices.len(), 1);
    assert_eq!(
        loaded.state.selectors[0].note.as_deref(),
        Some("Berlin-Staff")
    );

    // Selectors alone are not an empty state.
    let only = "users = [{ where = { department = \"Finance\" } }]";
    assert!(desired::parse_str(Path::new("o.toml"), only, today(), Mode::Strict).is_ok());

    let twice = "users = [\n  { where = { department = \"Finance\", country = \"DE\" } },\n  \
                 { where = { country = \"DE\", department = \"Finance\" } },\n]\n\
                 devices = [{ group = \"9a1f2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b\", expires = 2027-01-01 }]";
    let err = desired::parse_str(Path::new("t.toml"), twice, today(), Mode::Strict).unwrap_err();
    let rendered: Vec<String> = err.0.iter().map(ToString::to_string).collect();
    expect![[r#"
        [
            "t.toml:3:3: error: duplicate selector users: where country = DE, department = Finance: already listed at t.toml:2:3; remove one of the two entries",
            "t.toml:5:62: error: unknown key `expires` in a device selector; `expires` is for single entries: a selector stays until it is removed; allowed keys: group, where, note",
        ]
    "#]].assert_debug_eq(&rendered);
}

// ---------------------------------------------------------------------------------------------
// The example file.

#[test]
fn the_example_file_is_valid_and_shows_every_entry_form() {
    let path = PathBuf::from("config/scope.example.toml");
    let loaded = desired::load(&[path], today(), Mode::Strict).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert!(!loaded.state.allow_empty);
    let users = &loaded.state.users;
    let devices = &loaded.state.devices;
    assert_eq!(users.len(), 5);
    assert_eq!(devices.len(), 6);
    assert!(
        users
            .iter()
            .any(|u| matches!(u.key, UserKey::Upn(_)) && u.note.is_none())
    );
    assert!(
        users
            .iter()
            .any(|u| matches!(u.key, UserKey::Id(_)) && u.expires.is_none())
    );
    assert!(
        users
            .iter()
            .any(|u| matches!(u.key, UserKey::Upn(_)) && u.note.is_some())
    );
    assert!(
        users
            .iter()
            .any(|u| matches!(u.key, UserKey::Id(_)) && u.expires.is_some())
    );
    for kind in [0, 1, 2] {
        let count = devices
            .iter()
            .filter(|d| match d.key {
                DeviceKey::Name(_) => kind == 0,
                DeviceKey::Machine(_) => kind == 1,
                DeviceKey::AadDevice(_) => kind == 2,
            })
            .count();
        assert_eq!(
            count, 2,
            "two entries (bare and table) of device kind {kind}"
        );
    }
    assert!(
        devices
            .iter()
            .any(|d| d.note.is_some() && d.expires.is_some())
    );
}

// ---------------------------------------------------------------------------------------------
// The git commit id, from repositories written by hand.

const C1: &str = "0123456789abcdef0123456789abcdef01234567";
const C2: &str = "89abcdef0123456789abcdef0123456789abcdef";
const C3: &str = "fedcba9876543210fedcba9876543210fedcba98";

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A repository at `root` with `main` loose at C1 and `release` packed at C2.
fn make_repo(root: &Path, head: &str) {
    let git = root.join(".git");
    write(&git.join("HEAD"), head);
    write(&git.join("refs/heads/main"), &format!("{C1}\n"));
    write(
        &git.join("packed-refs"),
        &format!(
            "# pack-refs with: peeled fully-peeled sorted\n{C3} refs/tags/v1\n^{C1}\n{C2} refs/heads/release\n"
        ),
    );
    write(&root.join("scope/a.toml"), "users = [\"a@contoso.com\"]\n");
}

#[test]
fn commit_id_is_read_without_git() {
    use dexscope::desired::git::head_commit;
    let cases = [
        ("ref: refs/heads/main\n", Some(C1)),
        ("ref: refs/heads/release\n", Some(C2)),
        ("ref: refs/tags/v1\n", Some(C3)),
        (&*format!("{}\n", C2.to_uppercase()), Some(C2)),
        ("ref: refs/heads/unborn\n", None),
        ("ref: ../../etc/passwd\n", None),
        ("garbage\n", None),
    ];
    for (head, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        make_repo(dir.path(), head);
        let got = head_commit(&dir.path().join("scope/a.toml"));
        assert_eq!(got.as_deref(), want, "HEAD {head:?}");
        // A directory path works as well as a file path.
        assert_eq!(head_commit(&dir.path().join("scope")).as_deref(), want);
    }
}

#[test]
fn commit_id_of_a_linked_worktree_and_a_submodule() {
    use dexscope::desired::git::head_commit;
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("main");
    make_repo(&main, "ref: refs/heads/main\n");

    // `git worktree add ../wt release`: `.git` is a file, HEAD is per worktree, refs are shared.
    let wt_git = main.join(".git/worktrees/wt");
    write(&wt_git.join("HEAD"), "ref: refs/heads/release\n");
    write(&wt_git.join("commondir"), "../..\n");
    let wt = dir.path().join("wt");
    write(&wt.join(".git"), &format!("gitdir: {}\n", wt_git.display()));
    write(&wt.join("scope.toml"), "users = []\n");
    assert_eq!(head_commit(&wt.join("scope.toml")).as_deref(), Some(C2));

    // A submodule: `.git` file with a relative `gitdir:` and a detached HEAD.
    let sub_git = main.join(".git/modules/scope");
    write(&sub_git.join("HEAD"), &format!("{C3}\n"));
    let sub = main.join("vendor/scope");
    write(&sub.join(".git"), "gitdir: ../../.git/modules/scope\n");
    write(&sub.join("d/x.toml"), "users = []\n");
    assert_eq!(head_commit(&sub.join("d/x.toml")).as_deref(), Some(C3));

    // Outside any repository.
    let plain = tempfile::tempdir().unwrap();
    write(&plain.path().join("x.toml"), "users = []\n");
    assert_eq!(head_commit(&plain.path().join("x.toml")), None);
}

#[test]
fn load_records_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    make_repo(dir.path(), "ref: refs/heads/main\n");
    let loaded = desired::load(&[dir.path().join("scope")], today(), Mode::Runtime).unwrap();
    assert_eq!(loaded.state.commit.as_deref(), Some(C1));
    assert_eq!(loaded.state.sources, [dir.path().join("scope/a.toml")]);
}

// ---------------------------------------------------------------------------------------------
// Robustness: the parser never panics.

const VALID: &str = r#"# a valid file
users = [
  "alice@contoso.com",
  "6f1c2a9e-0b7d-4a57-9a51-2d9f0c3e7b14",
  { upn = "bob@contoso.com", note = "x", expires = 2099-03-31 },
  { id = "0b3e9f62-4a1d-4c8e-9f3a-7d2c1b0e5a96" },
]
devices = [
  "ws-ber-0012.contoso.local",
  { id = "73e7e2de709dff64ef64b1d0c30e67fab63279db", expires = 2026-06-05 },
  { aad_device_id = "1a2b3c4d-1111-2222-3333-444455556666", note = "kiosk" },
  { name = "srv.contoso.local" },
]
allow_empty = false
"#;

/// Every diagnostic points inside the file: line within the text, column within the line.
fn assert_positions_in_range(text: &str, diagnostics: &[desired::Diagnostic]) {
    let lines: Vec<&str> = text.split('\n').collect();
    for d in diagnostics {
        let line = d.at.line as usize;
        assert!(line >= 1 && line <= lines.len(), "{d} in {text:?}");
        assert!(
            d.at.col >= 1 && d.at.col as usize <= lines[line - 1].chars().count() + 1,
            "{d}"
        );
    }
}

#[test]
fn the_robustness_base_file_is_valid() {
    let loaded = desired::parse_str(Path::new("v.toml"), VALID, today(), Mode::Strict).unwrap();
    assert_eq!(
        (loaded.state.users.len(), loaded.state.devices.len()),
        (4, 4)
    );
    assert_eq!(loaded.warnings.len(), 1);
}

proptest! {
    #[test]
    fn parse_never_panics_on_arbitrary_input(text in ".{0,400}") {
        for mode in [Mode::Strict, Mode::Runtime] {
            let outcome = desired::parse_files(&[(Path::new("p.toml"), text.as_str())], today(), mode);
            assert_positions_in_range(&text, &outcome.diagnostics);
        }
    }

    #[test]
    fn parse_never_panics_on_mutations_of_a_valid_file(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..3, "[\"'=\\[\\]{},\n#@.a-z0-9 -]{0,4}"), 1..6)
    ) {
        let mut text = VALID.to_string();
        for (at, op, insert) in edits {
            let mut pos = at.index(text.len() + 1);
            while !text.is_char_boundary(pos) { pos -= 1; }
            let end = (pos + insert.len().max(1)).min(text.len());
            let mut end = end;
            while !text.is_char_boundary(end) { end -= 1; }
            match op {
                0 => text.insert_str(pos, &insert),
                1 => text.replace_range(pos..end, ""),
                _ => text.replace_range(pos..end, &insert),
            }
        }
        let outcome = desired::parse_files(&[(Path::new("m.toml"), text.as_str())], today(), Mode::Strict);
        assert_positions_in_range(&text, &outcome.diagnostics);
        // A state that parses keeps only well-formed, distinct entries.
        if outcome.is_valid() {
            let mut keys: Vec<_> = outcome.state.users.iter().map(|u| u.key.clone()).collect();
            let n = keys.len();
            keys.sort();
            keys.dedup();
            prop_assert_eq!(keys.len(), n);
        }
    }
}
