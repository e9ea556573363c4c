//! qfuse-gemm-bench: being ported to the `gemm.cu` template (temporary placeholder).
fn main() {
    eprintln!("qfuse-gemm-bench: being rewritten");
    std::process::exit(2);
}
