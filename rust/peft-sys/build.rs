//! Finds libpeft: $PEFT_LIB_DIR if set, else `pkg-config --libs peft` (no crates needed).
use std::env;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=PEFT_LIB_DIR");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_SYSROOT_DIR");
    if let Ok(dir) = env::var("PEFT_LIB_DIR") {
        println!("cargo:rustc-link-search=native={}", dir);
        println!("cargo:rustc-link-lib=dylib=peft");
        return;
    }
    let out = Command::new("pkg-config").args(["--libs", "peft"]).output();
    match out {
        Ok(o) if o.status.success() => {
            for flag in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                if let Some(dir) = flag.strip_prefix("-L") {
                    println!("cargo:rustc-link-search=native={}", dir);
                } else if let Some(lib) = flag.strip_prefix("-l") {
                    println!("cargo:rustc-link-lib={}", lib);
                }
            }
        }
        _ => {
            // Fall back to the default search path (e.g. /usr/lib from the Debian package).
            println!("cargo:warning=pkg-config found no peft.pc; linking -lpeft from the default paths");
            println!("cargo:rustc-link-lib=dylib=peft");
        }
    }
}
