//! Every diagnostic the transport macros emit, pinned: `fail/*.rs` must fail to compile
//! with exactly the neighbouring `.stderr`; `pass/*.rs` must compile and run.
//! Regenerate after an intended change with `TRYBUILD=overwrite cargo test -p ui-tests`,
//! then read every changed `.stderr` as a newcomer would.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("pass/*.rs");
    cases.compile_fail("fail/*.rs");
}
