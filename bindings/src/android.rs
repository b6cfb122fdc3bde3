//! Android glue: `JNI_OnLoad` keeps the `JavaVM` (for future calls back into Java from Rust
//! threads) and routes the `log` crate to logcat under the tag "pocketlm".

use std::ffi::c_void;

use jni::sys::{jint, JNI_VERSION_1_6};
use jni::JavaVM;
use once_cell::sync::OnceCell;

/// The `JavaVM` that loaded this library (set once by `JNI_OnLoad`).
static JAVA_VM: OnceCell<JavaVM> = OnceCell::new();

/// Routes the `log` crate to logcat (tag "pocketlm"); idempotent. Also called when a model loads,
/// so logs reach logcat even when JNA loaded the library without `JNI_OnLoad`.
pub(crate) fn init_logging() {
    android_logger::init_once(
        android_logger::Config::default().with_tag("pocketlm").with_max_level(log::LevelFilter::Info),
    );
}

/// Called by the JVM when `System.loadLibrary` loads this library.
///
/// # Safety
/// Called by the JVM with a valid `JavaVM` pointer.
#[no_mangle]
pub unsafe extern "system" fn JNI_OnLoad(vm: *mut jni::sys::JavaVM, _reserved: *mut c_void) -> jint {
    init_logging();
    if let Ok(vm) = JavaVM::from_raw(vm) {
        let _ = JAVA_VM.set(vm);
    }
    JNI_VERSION_1_6
}
