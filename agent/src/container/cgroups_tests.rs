use super::*;

fn resources(json: &str) -> LinuxResources {
    serde_json::from_str(json).unwrap()
}

fn files(writes: &[Write]) -> Vec<(&str, &str)> {
    writes.iter().map(|w| (w.file.as_str(), w.value.as_str())).collect()
}

#[test]
fn default_path_is_the_container_id() {
    assert_eq!(relative_path("c1", None).unwrap(), PathBuf::from("c1"));
    assert_eq!(relative_path("c1", Some(Path::new(""))).unwrap(), PathBuf::from("c1"));
    assert_eq!(relative_path("c1", Some(Path::new("/"))).unwrap(), PathBuf::from("c1"));
    assert_eq!(
        relative_path("c1", Some(Path::new("system.slice:cri-containerd:c1"))).unwrap(),
        PathBuf::from("c1")
    );
}

#[test]
fn plain_cgroups_paths_are_kept_below_the_root() {
    assert_eq!(
        relative_path("c1", Some(Path::new("/kubepods/burstable/pod1/c1"))).unwrap(),
        PathBuf::from("kubepods/burstable/pod1/c1")
    );
    assert!(relative_path("c1", Some(Path::new("/a/../../etc"))).is_err());
}

#[test]
fn memory_pids_and_cpu_limits() {
    let writes = resource_writes(&resources(
        r#"{"memory":{"limit":268435456,"swap":536870912,"reservation":1048576},
            "cpu":{"shares":1024,"quota":50000,"period":100000,"cpus":"0-1"},
            "pids":{"limit":64}}"#,
    ))
    .unwrap();
    assert_eq!(
        files(&writes),
        vec![
            ("memory.max", "268435456"),
            ("memory.swap.max", "268435456"),
            ("memory.low", "1048576"),
            ("cpu.max", "50000 100000"),
            ("cpu.weight", "39"),
            ("cpuset.cpus", "0-1"),
            ("pids.max", "64"),
        ]
    );
    assert!(writes.iter().find(|w| w.file == "memory.swap.max").is_some_and(|w| !w.required));
    assert!(writes.iter().find(|w| w.file == "memory.max").is_some_and(|w| w.required));
}

#[test]
fn unlimited_values_become_max() {
    let writes = resource_writes(&resources(
        r#"{"memory":{"limit":-1,"swap":-1},"cpu":{"quota":-1},"pids":{"limit":0}}"#,
    ))
    .unwrap();
    assert_eq!(
        files(&writes),
        vec![
            ("memory.max", "max"),
            ("memory.swap.max", "max"),
            ("cpu.max", "max 100000"),
            ("pids.max", "max")
        ]
    );
}

#[test]
fn bad_resources_are_rejected() {
    assert!(resource_writes(&resources(r#"{"memory":{"limit":200,"swap":100}}"#)).is_err());
    assert!(resource_writes(&resources(r#"{"unified":{"../x":"1"}}"#)).is_err());
}

#[test]
fn shares_convert_like_runc() {
    assert_eq!(shares_to_weight(2), 1);
    assert_eq!(shares_to_weight(1024), 39);
    assert_eq!(shares_to_weight(262_144), 10_000);
    assert_eq!(shares_to_weight(1), 1);
}

#[test]
fn stat_files() {
    let cpu = parse_flat_keyed("usage_usec 1200\nuser_usec 1000\nsystem_usec 200\nnr_periods 0\n");
    assert_eq!(cpu.get("usage_usec"), Some(&1200));
    assert_eq!(cpu.get("system_usec"), Some(&200));
    assert_eq!(parse_value("max\n"), u64::MAX);
    assert_eq!(parse_value("4096\n"), 4096);
    assert_eq!(parse_value(""), 0);
}

#[test]
fn block_io_as_runc_converts_it() {
    let writes = resource_writes(&resources(
        r#"{"blockIO":{"weight":500,
            "throttleReadBpsDevice":[{"major":8,"minor":0,"rate":1048576}],
            "throttleWriteIOPSDevice":[{"major":8,"minor":16,"rate":100}]}}"#,
    ))
    .unwrap();
    assert_eq!(
        files(&writes),
        vec![("io.weight", "4950"), ("io.max", "8:0 rbps=1048576"), ("io.max", "8:16 wiops=100")]
    );
    assert_eq!(blkio_weight_to_io_weight(10), 1);
    assert_eq!(blkio_weight_to_io_weight(1000), 10000);
}
