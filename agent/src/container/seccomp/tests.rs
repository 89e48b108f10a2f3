use super::*;

/// `struct seccomp_data` for a call.
fn data(nr: u32, arch: u32, args: [u64; 6]) -> [u8; 64] {
    let mut d = [0u8; 64];
    d[0..4].copy_from_slice(&nr.to_ne_bytes());
    d[4..8].copy_from_slice(&arch.to_ne_bytes());
    for (i, arg) in args.iter().enumerate() {
        let o = 16 + 8 * i;
        d[o..o + 8].copy_from_slice(&arg.to_ne_bytes());
    }
    d
}

fn call(filter: &Filter, name: &str, args: [u64; 6]) -> u32 {
    let nr = syscall_number(name).unwrap_or_else(|| panic!("unknown syscall {name}"));
    bpf::run(&filter.program, &data(nr, AUDIT_ARCH_X86_64, args))
}

fn profile(json: &str) -> LinuxSeccomp {
    serde_json::from_str(json).unwrap()
}

const EPERM: u32 = RET_ERRNO | libc::EPERM as u32;
const ENOSYS: u32 = RET_ERRNO | libc::ENOSYS as u32;

#[test]
fn syscall_table_is_sorted_and_complete() {
    let table = syscalls_x86_64::SYSCALLS;
    assert!(table.windows(2).all(|pair| pair[0].0 < pair[1].0), "the table must be sorted by name");
    assert_eq!(syscall_number("read"), Some(0));
    assert_eq!(syscall_number("socket"), Some(SYS_SOCKET));
    assert_eq!(syscall_number("clone3"), Some(435));
    assert_eq!(syscall_number("set_mempolicy_home_node"), Some(450));
    assert_eq!(syscall_number("_llseek"), None);
    assert_eq!(table.len(), 362);
}

#[test]
fn allow_list_with_errno_default() {
    let filter = compile(&profile(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86"],
            "syscalls":[{"names":["read","write","exit_group","_llseek","no_such_call"],"action":"SCMP_ACT_ALLOW"},
                        {"names":["clone3"],"action":"SCMP_ACT_ERRNO","errnoRet":38}]}"#,
    ))
    .unwrap();
    assert_eq!(call(&filter, "read", [0; 6]), RET_ALLOW);
    assert_eq!(call(&filter, "exit_group", [0; 6]), RET_ALLOW);
    assert_eq!(call(&filter, "mount", [0; 6]), EPERM);
    assert_eq!(call(&filter, "clone3", [0; 6]), ENOSYS);
    // Above the highest call the profile names (clone3, 435): ENOSYS, not EPERM.
    assert_eq!(call(&filter, "futex_waitv", [0; 6]), ENOSYS);
    assert_eq!(bpf::run(&filter.program, &data(1000, AUDIT_ARCH_X86_64, [0; 6])), ENOSYS);
    // Other architectures are killed, x32 calls do not exist.
    assert_eq!(bpf::run(&filter.program, &data(3, 0x4000_0003, [0; 6])), RET_KILL_PROCESS);
    assert_eq!(
        bpf::run(&filter.program, &data(X32_SYSCALL_BIT, AUDIT_ARCH_X86_64, [0; 6])),
        ENOSYS
    );
    assert_eq!(filter.flags, 0);
}

#[test]
fn deny_list_with_allow_default() {
    let filter = compile(&profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_LOG"],
            "syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":13},
                        {"names":["reboot"],"action":"SCMP_ACT_KILL_PROCESS"},
                        {"names":["getppid"],"action":"SCMP_ACT_ERRNO"},
                        {"names":["sync"],"action":"SCMP_ACT_TRAP"},
                        {"names":["getpid"],"action":"SCMP_ACT_LOG"},
                        {"names":["gettid"],"action":"SCMP_ACT_TRACE","errnoRet":5},
                        {"names":["kill"],"action":"SCMP_ACT_KILL"}]}"#,
    ))
    .unwrap();
    assert_eq!(call(&filter, "mkdir", [0; 6]), RET_ERRNO | libc::EACCES as u32);
    assert_eq!(call(&filter, "mkdirat", [0; 6]), RET_ERRNO | libc::EACCES as u32);
    assert_eq!(call(&filter, "reboot", [0; 6]), RET_KILL_PROCESS);
    assert_eq!(call(&filter, "getppid", [0; 6]), EPERM);
    assert_eq!(call(&filter, "sync", [0; 6]), RET_TRAP);
    assert_eq!(call(&filter, "getpid", [0; 6]), RET_LOG);
    assert_eq!(call(&filter, "gettid", [0; 6]), RET_TRACE | 5);
    assert_eq!(call(&filter, "kill", [0; 6]), RET_KILL_THREAD);
    assert_eq!(call(&filter, "read", [0; 6]), RET_ALLOW);
    // No ENOSYS rule with an allowing default.
    assert_eq!(bpf::run(&filter.program, &data(1000, AUDIT_ARCH_X86_64, [0; 6])), RET_ALLOW);
    assert_eq!(filter.flags, FLAG_LOG);
}

#[test]
fn default_errno_ret() {
    let filter = compile(&profile(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":38,"syscalls":[]}"#,
    ))
    .unwrap();
    assert_eq!(call(&filter, "read", [0; 6]), ENOSYS);
}

#[test]
fn containerd_default_profile_argument_rules() {
    // The argument rules of containerd's default profile (ctr run --seccomp).
    let filter = compile(&profile(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
            {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":0,"op":"SCMP_CMP_EQ"}]},
            {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]},
            {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":4294967295,"op":"SCMP_CMP_EQ"}]},
            {"names":["clone"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":2114060288,"op":"SCMP_CMP_MASKED_EQ"}]},
            {"names":["read"],"action":"SCMP_ACT_ALLOW"}]}"#,
    ))
    .unwrap();
    let with = |a0: u64| [a0, 0, 0, 0, 0, 0];
    assert_eq!(call(&filter, "personality", with(0)), RET_ALLOW);
    assert_eq!(call(&filter, "personality", with(8)), RET_ALLOW);
    assert_eq!(call(&filter, "personality", with(0xffff_ffff)), RET_ALLOW);
    assert_eq!(call(&filter, "personality", with(0x1_0000_0000)), EPERM);
    assert_eq!(call(&filter, "personality", with(1)), EPERM);
    // clone without namespace flags is allowed, with CLONE_NEWUSER (0x10000000) it is not.
    assert_eq!(call(&filter, "clone", with(0x0111_0011)), RET_ALLOW);
    assert_eq!(call(&filter, "clone", with(0x1000_0000 | 0x11)), EPERM);
    assert_eq!(call(&filter, "clone", with(0x0002_0000)), EPERM);
}

#[test]
fn sixty_four_bit_comparisons() {
    let rule = |op: &str, value: u64| {
        compile(&profile(&format!(
            r#"{{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{{"names":["lseek"],"action":"SCMP_ACT_ERRNO",
                "args":[{{"index":1,"value":{value},"valueTwo":0,"op":"{op}"}}]}}]}}"#
        )))
        .unwrap()
    };
    let hits = |filter: &Filter, arg: u64| call(filter, "lseek", [0, arg, 0, 0, 0, 0]) == EPERM;
    let big = 0x1_0000_0005u64;
    let samples = [
        0u64,
        4,
        5,
        6,
        0xffff_ffff,
        0x1_0000_0000,
        0x1_0000_0004,
        big,
        0x1_0000_0006,
        0x2_0000_0000,
        u64::MAX,
    ];
    type Expect = fn(u64, u64) -> bool;
    let cases: [(&str, Expect); 6] = [
        ("SCMP_CMP_EQ", |a, v| a == v),
        ("SCMP_CMP_NE", |a, v| a != v),
        ("SCMP_CMP_LT", |a, v| a < v),
        ("SCMP_CMP_LE", |a, v| a <= v),
        ("SCMP_CMP_GT", |a, v| a > v),
        ("SCMP_CMP_GE", |a, v| a >= v),
    ];
    for value in [5u64, big] {
        for (op, expect) in cases {
            let filter = rule(op, value);
            for arg in samples {
                assert_eq!(hits(&filter, arg), expect(arg, value), "{op} {value:#x} with {arg:#x}");
            }
        }
    }
}

#[test]
fn masked_eq_compares_both_halves() {
    let filter = compile(&profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["ioctl"],"action":"SCMP_ACT_ERRNO",
            "args":[{"index":1,"value":18446744069414584575,"valueTwo":4294967296,"op":"SCMP_CMP_MASKED_EQ"}]}]}"#,
    ))
    .unwrap();
    // mask 0xffff_ffff_0000_00ff, expected 0x1_0000_0000
    let hits = |arg: u64| call(&filter, "ioctl", [0, arg, 0, 0, 0, 0]) == EPERM;
    assert!(hits(0x1_0000_0000));
    assert!(hits(0x1_1234_5600));
    assert!(!hits(0x1_0000_0001));
    assert!(!hits(0x2_0000_0000));
}

#[test]
fn conditions_on_different_arguments_are_anded_on_the_same_one_ored() {
    let and = compile(&profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["kill"],"action":"SCMP_ACT_ERRNO",
            "args":[{"index":0,"value":1,"op":"SCMP_CMP_EQ"},{"index":1,"value":9,"op":"SCMP_CMP_EQ"}]}]}"#,
    ))
    .unwrap();
    assert_eq!(call(&and, "kill", [1, 9, 0, 0, 0, 0]), EPERM);
    assert_eq!(call(&and, "kill", [1, 15, 0, 0, 0, 0]), RET_ALLOW);
    assert_eq!(call(&and, "kill", [2, 9, 0, 0, 0, 0]), RET_ALLOW);

    let or = compile(&profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["kill"],"action":"SCMP_ACT_ERRNO",
            "args":[{"index":1,"value":9,"op":"SCMP_CMP_EQ"},{"index":1,"value":15,"op":"SCMP_CMP_EQ"}]}]}"#,
    ))
    .unwrap();
    assert_eq!(call(&or, "kill", [1, 9, 0, 0, 0, 0]), EPERM);
    assert_eq!(call(&or, "kill", [1, 15, 0, 0, 0, 0]), EPERM);
    assert_eq!(call(&or, "kill", [1, 2, 0, 0, 0, 0]), RET_ALLOW);
}

#[test]
fn conditional_rules_come_before_the_unconditional_one() {
    let filter = compile(&profile(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
            {"names":["chmod"],"action":"SCMP_ACT_ALLOW"},
            {"names":["chmod"],"action":"SCMP_ACT_ERRNO","errnoRet":13,"args":[{"index":1,"value":511,"op":"SCMP_CMP_EQ"}]}]}"#,
    ))
    .unwrap();
    assert_eq!(call(&filter, "chmod", [0, 0o777, 0, 0, 0, 0]), RET_ERRNO | libc::EACCES as u32);
    assert_eq!(call(&filter, "chmod", [0, 0o755, 0, 0, 0, 0]), RET_ALLOW);
}

#[test]
fn invalid_profiles_are_refused() {
    let notify =
        compile(&profile(r#"{"defaultAction":"SCMP_ACT_NOTIFY","syscalls":[]}"#)).unwrap_err();
    assert_eq!(notify.code, ErrorCode::InvalidArgument);
    let index = compile(&profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO",
            "args":[{"index":6,"value":0,"op":"SCMP_CMP_EQ"}]}]}"#,
    ))
    .unwrap_err();
    assert_eq!(index.code, ErrorCode::InvalidArgument);
}

#[test]
fn vsock_guard_alone_and_in_profiles() {
    let eafnosupport = RET_ERRNO | GUARD_ERRNO;
    let allow_all = compile(&profile(r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#)).unwrap();
    for filter in [guard(), allow_all] {
        assert_eq!(call(&filter, "socket", [AF_VSOCK as u64, 1, 0, 0, 0, 0]), eafnosupport);
        // Only the low 32 bits of the int count, as in the kernel.
        assert_eq!(call(&filter, "socket", [0xffff_ffff_0000_0028, 1, 0, 0, 0, 0]), eafnosupport);
        assert_eq!(call(&filter, "socket", [libc::AF_UNIX as u64, 1, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(call(&filter, "socket", [libc::AF_INET as u64, 2, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(call(&filter, "connect", [3, 0, 0, 0, 0, 0]), RET_ALLOW);
    }
    assert_eq!(
        bpf::run(
            &guard().program,
            &data(SYS_SOCKET | X32_SYSCALL_BIT, AUDIT_ARCH_X86_64, [40, 1, 0, 0, 0, 0])
        ),
        eafnosupport
    );
    assert_eq!(
        bpf::run(&guard().program, &data(SYS_SOCKET, 0x4000_0003, [40, 1, 0, 0, 0, 0])),
        RET_ALLOW
    );
    // A profile that allows socket() still refuses AF_VSOCK.
    let allows_socket = compile(&profile(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["socket"],"action":"SCMP_ACT_ALLOW"}]}"#,
    ))
    .unwrap();
    assert_eq!(call(&allows_socket, "socket", [AF_VSOCK as u64, 1, 0, 0, 0, 0]), eafnosupport);
    assert_eq!(call(&allows_socket, "socket", [libc::AF_INET as u64, 1, 0, 0, 0, 0]), RET_ALLOW);
}

#[test]
fn a_full_allow_list_fits_and_searches_correctly() {
    // Every known call allowed, one by one, except a few: the tree must route each to its leaf.
    let names: Vec<String> = syscalls_x86_64::SYSCALLS
        .iter()
        .map(|(name, _)| name.to_string())
        .filter(|name| !["mount", "umount2", "reboot"].contains(&name.as_str()))
        .collect();
    let json = serde_json::json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": names.iter().map(|name| serde_json::json!({"names": [name], "action": "SCMP_ACT_ALLOW"})).collect::<Vec<_>>(),
    });
    let filter = compile(&serde_json::from_value(json).unwrap()).unwrap();
    assert!(filter.program.len() < bpf::MAX_INSNS);
    for (name, _) in syscalls_x86_64::SYSCALLS {
        let expect = if ["mount", "umount2", "reboot"].contains(name) { EPERM } else { RET_ALLOW };
        let args = if *name == "socket" { [libc::AF_INET as u64, 0, 0, 0, 0, 0] } else { [0; 6] };
        assert_eq!(call(&filter, name, args), expect, "{name}");
    }
}
