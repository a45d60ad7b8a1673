//! Sets `AWS_EC2_METADATA_DISABLED=true` in every test binary that includes this module, before
//! `main` runs: no test — nor a `gst-launch-1.0` or example it starts, which inherit the
//! environment — may ask the EC2 instance-metadata service (169.254.169.254) for credentials
//! when the AWS default credential chain is reached. `scripts/test.sh` exports it as well; this
//! covers a plain `cargo test` / `cargo nextest run`.

#[used]
#[unsafe(link_section = ".init_array")]
static DISABLE_INSTANCE_METADATA: extern "C" fn() = disable_instance_metadata;

extern "C" fn disable_instance_metadata() {
    // SAFETY: runs from `.init_array`, before `main`, while the process has a single thread.
    unsafe { std::env::set_var("AWS_EC2_METADATA_DISABLED", "true") };
}
