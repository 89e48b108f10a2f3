//! Generates the agent API's Rust code from `proto/` at build time.
//!
//! ttrpc-codegen drives protobuf-codegen's pure-Rust parser, so no `protoc` binary is needed.

use std::fs;
use std::path::{Path, PathBuf};

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

const PROTOS: &[&str] = &["proto/bazaar/agent/v1/agent.proto"];

fn main() {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }

    Codegen::new()
        .inputs(PROTOS)
        .include("proto")
        .rust_protobuf()
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .customize(Customize {
            // Both ends are tokio programs: the agent serves, the runtime calls.
            async_all: true,
            ..Default::default()
        })
        .out_dir(&out_dir)
        .run()
        .expect("generating the agent API from proto/ failed");

    strip_inner_attributes(&out_dir);
}

/// `include!` rejects inner attributes (`#![...]`) and inner doc comments (`//!`), which the
/// generator writes at the top of each file; the crate sets the equivalent lints itself.
fn strip_inner_attributes(dir: &Path) {
    for entry in fs::read_dir(dir).expect("OUT_DIR is readable") {
        let path = entry.expect("OUT_DIR entry").path();
        if path.extension().is_some_and(|ext| ext == "rs") {
            let text = fs::read_to_string(&path).expect("generated file is UTF-8");
            let kept: Vec<&str> = text
                .lines()
                .filter(|line| !line.starts_with("#!") && !line.starts_with("//!"))
                .collect();
            fs::write(&path, kept.join("\n")).expect("rewriting generated file");
        }
    }
}
