//! The cdylib exports the module global. CI has no Mesos, so it checks the
//! stand-in global built by the same build.rs mechanism (`--undefined` +
//! version script) that exports `org_mesos_gelf_GelfContainerLogger`.

use std::ffi::CString;
use std::path::PathBuf;
use std::process::Command;

fn cdylib() -> PathBuf {
    // `cargo test` builds the cdylib next to this test in target/<profile>/deps;
    // `cargo build` also copies it to target/<profile>.
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    [
        deps.join("libmesos_gelf_logger.so"),
        deps.parent().unwrap().join("libmesos_gelf_logger.so"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .unwrap_or_else(|| panic!("libmesos_gelf_logger.so not found near {}", deps.display()))
}

#[repr(C)]
struct Probe {
    name: *const libc::c_char,
    api_version: libc::c_int,
}

#[test]
fn module_style_global_is_exported_as_data_and_found_by_dlsym() {
    let so = cdylib();
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&so)
        .output()
        .expect("nm");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.ends_with(" mesos_gelf_export_probe"))
        .unwrap_or_else(|| panic!("not exported:\n{text}"));
    assert!(line.contains(" D ") || line.contains(" B "), "{line}");
    // rustc keeps Rust internals local (cxx's `cxxbridge1$` glue is
    // `#[no_mangle]` and so exported, harmlessly).
    assert!(
        !text
            .lines()
            .any(|l| l.contains(" _R") || l.contains(" _ZN3std")),
        "Rust internals exported"
    );

    // Built with the Mesos shim (scripts/test.sh with a Mesos lab), the
    // library needs libmesos' symbols, which the agent provides: load them
    // first, as the agent would have (the lab's libmesos and its shims).
    if text.contains(" org_mesos_gelf_GelfContainerLogger") {
        let lab = std::env::var("MESOS_LAB")
            .expect("shim built: MESOS_LAB names the Mesos it was built against");
        for lib in [
            "libcrypto.so.1.0.0",
            "libssl.so.1.0.0",
            "libcurl.so.4",
            "libmesos-compat.so",
            "libmesos-1.11.0.so",
        ] {
            // Lazily: the lab's libmesos and its compat stubs refer to each other.
            let p = CString::new(format!("{lab}/lib/{lib}")).unwrap();
            let h = unsafe { libc::dlopen(p.as_ptr(), libc::RTLD_LAZY | libc::RTLD_GLOBAL) };
            assert!(!h.is_null(), "cannot load {lab}/lib/{lib}: {:?}", unsafe {
                std::ffi::CStr::from_ptr(libc::dlerror())
            });
        }
    }
    let path = CString::new(so.to_str().unwrap()).unwrap();
    unsafe {
        let h = libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        assert!(
            !h.is_null(),
            "dlopen failed: {:?}",
            std::ffi::CStr::from_ptr(libc::dlerror())
        );
        let sym = CString::new("mesos_gelf_export_probe").unwrap();
        let p = libc::dlsym(h, sym.as_ptr()) as *const Probe;
        assert!(!p.is_null(), "dlsym failed");
        let name = std::ffi::CStr::from_ptr((*p).name).to_str().unwrap();
        assert_eq!(name, "mesos-gelf", "the global's constructor ran");
        assert_eq!((*p).api_version, 2);
    }
}
