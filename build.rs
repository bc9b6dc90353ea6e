//! Fetches ONNX Runtime's shared library from PyPI's `onnxruntime` wheel, once, into
//! `target/onnxruntime/`, and tells the crate where it is (`GAUNTLET_BUILD_ONNXRUNTIME`).
//!
//! Why here: the `ort` crate's own download comes from a CDN that build machines often cannot reach,
//! while PyPI usually is; a fresh clone then needs no manual step for `cargo run` or `cargo test`.
//! Failure is not fatal: the gateway then serves with tract and says how to get ONNX Runtime.
//! Opt out with `GAUNTLET_BUILD_FETCH_ONNXRUNTIME=0` (e.g. when `ORT_DYLIB_PATH` points at a system copy).
//!
//! It also generates the gRPC code from `proto/open_inference_grpc.proto` with protox (a protobuf
//! compiler in Rust: no system `protoc`) and tonic-prost-build, and writes the encoded file
//! descriptor set that server reflection serves.

use std::env;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

const ORT_VERSION: &str = "1.32.0";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=GAUNTLET_BUILD_FETCH_ONNXRUNTIME");
    let library = target_dir().join("onnxruntime").join(format!("libonnxruntime.so.{ORT_VERSION}"));
    println!("cargo:rustc-env=GAUNTLET_BUILD_ONNXRUNTIME={}", library.display());
    println!("cargo:rustc-env=GAUNTLET_BUILD_ONNXRUNTIME_VERSION={ORT_VERSION}");
    export_allocator();
    generate_grpc();
    if library.exists() || env::var("GAUNTLET_BUILD_FETCH_ONNXRUNTIME").as_deref() == Ok("0") {
        return;
    }
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        println!("cargo:warning=ONNX Runtime is fetched automatically on Linux only; set ORT_DYLIB_PATH");
        return;
    }
    if let Err(error) = fetch(&library) {
        println!(
            "cargo:warning=could not fetch ONNX Runtime {ORT_VERSION} from PyPI ({error}); the gateway \
             will fall back to tract. Run scripts/fetch-onnxruntime.sh or set ORT_DYLIB_PATH."
        );
    }
}

/// The executables link mimalloc with its `override` feature: it defines `malloc`, `free` and the
/// rest. Exporting them makes every shared library (glibc itself, libstdc++, and ONNX Runtime, which
/// is loaded with dlopen) allocate from mimalloc too, as `LD_PRELOAD` of mimalloc would; unexported,
/// the executable and glibc would each free pointers the other allocated.
fn export_allocator() {
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    let symbols = [
        "malloc",
        "free",
        "calloc",
        "realloc",
        "reallocarray",
        "posix_memalign",
        "aligned_alloc",
        "memalign",
        "valloc",
        "pvalloc",
        "malloc_usable_size",
        "cfree",
        "_Znwm",
        "_Znam",
        "_ZdlPv",
        "_ZdaPv",
        "_ZdlPvm",
        "_ZdaPvm",
        "_ZnwmRKSt9nothrow_t",
        "_ZnamRKSt9nothrow_t",
        "_ZnwmSt11align_val_t",
        "_ZnamSt11align_val_t",
        "_ZdlPvSt11align_val_t",
        "_ZdaPvSt11align_val_t",
        "_ZdlPvmSt11align_val_t",
        "_ZdaPvmSt11align_val_t",
        "_ZdlPvRKSt9nothrow_t",
        "_ZdaPvRKSt9nothrow_t",
        "_ZdlPvSt11align_val_tRKSt9nothrow_t",
        "_ZdaPvSt11align_val_tRKSt9nothrow_t",
        "_ZnwmSt11align_val_tRKSt9nothrow_t",
        "_ZnamSt11align_val_tRKSt9nothrow_t",
    ];
    let list = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("allocator.list");
    let body: String = symbols.iter().map(|s| format!("  {s};\n")).collect();
    fs::write(&list, format!("{{\n{body}}};\n")).expect("writing the allocator's dynamic list");
    for kind in ["bins", "examples", "benches"] {
        println!("cargo:rustc-link-arg-{kind}=-Wl,--dynamic-list={}", list.display());
    }
}

/// The Open Inference Protocol's messages and service, into OUT_DIR (`inference.rs` and
/// `inference_descriptor.bin`). Byte fields are `bytes::Bytes`: raw tensor contents are sliced
/// out of the received buffer, not copied.
fn generate_grpc() {
    let proto = "proto/open_inference_grpc.proto";
    println!("cargo:rerun-if-changed={proto}");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let descriptors = protox::compile([proto], ["proto"]).unwrap_or_else(|e| panic!("compiling {proto}: {e}"));
    fs::write(out.join("inference_descriptor.bin"), protox::prost::Message::encode_to_vec(&descriptors))
        .expect("writing the file descriptor set");
    tonic_prost_build::configure()
        .bytes(".inference")
        .emit_rerun_if_changed(false)
        .compile_fds(descriptors)
        .unwrap_or_else(|e| panic!("generating the gRPC code: {e}"));
}

/// `target/` (or `CARGO_TARGET_DIR`): OUT_DIR is `<target>/<profile>/build/<pkg>-<hash>/out`.
fn target_dir() -> PathBuf {
    if let Ok(dir) = env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    out.ancestors().nth(4).map(Path::to_path_buf).unwrap_or(out)
}

fn fetch(library: &Path) -> Result<(), String> {
    let dir = library.parent().ok_or("library path has no parent")?;
    let download = dir.join("wheel");
    fs::create_dir_all(&download).map_err(|e| format!("create {}: {e}", download.display()))?;
    let python = env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let status = Command::new(&python)
        .args(["-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"])
        .arg(format!("onnxruntime=={ORT_VERSION}"))
        .arg("-d")
        .arg(&download)
        .status()
        .map_err(|e| format!("run {python} -m pip: {e}"))?;
    if !status.success() {
        return Err(format!("pip download exited with {status}"));
    }
    let wheel = fs::read_dir(&download)
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|p| p.extension().is_some_and(|ext| ext == "whl"))
        .ok_or("pip downloaded no wheel")?;
    let bytes = extract_member(&wheel, &format!("onnxruntime/capi/libonnxruntime.so.{ORT_VERSION}"))?;
    // Write then rename, so a concurrent or interrupted build never sees half a library.
    let partial = library.with_extension("partial");
    fs::write(&partial, bytes).map_err(|e| format!("write {}: {e}", partial.display()))?;
    fs::rename(&partial, library).map_err(|e| format!("rename: {e}"))?;
    let _ = fs::remove_dir_all(&download);
    Ok(())
}

/// Reads one member of the wheel (a zip) with Python's zipfile, which pip guarantees is present.
fn extract_member(wheel: &Path, member: &str) -> Result<Vec<u8>, String> {
    let python = env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let script = "import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))";
    let mut child = Command::new(python)
        .args(["-c", script])
        .arg(wheel)
        .arg(member)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("run python zipfile: {e}"))?;
    let mut bytes = Vec::new();
    child.stdout.take().ok_or("no stdout")?.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() || bytes.is_empty() {
        return Err(format!("{member} not found in {}", wheel.display()));
    }
    Ok(bytes)
}
