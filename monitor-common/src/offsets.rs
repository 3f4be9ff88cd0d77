//! Byte offsets of the kernel structure fields the programs read.
//!
//! Rust eBPF programs have no CO-RE relocations, and offsets compiled in from
//! one kernel's headers would silently read garbage on another. Instead the
//! agent resolves every field below by name from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`) at start-up and writes the result into the
//! programs' read-only data before loading them, so the verifier sees the
//! offsets as constants. A field the kernel lacks is a clear start-up error
//! naming it, never a wrong read.

macro_rules! kernel_offsets {
    ($( $(#[$doc:meta])* $field:ident => $path:literal ),* $(,)?) => {
        /// Field offsets resolved from BTF; see the module docs.
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct KernelOffsets {
            $( $(#[$doc])* #[doc = concat!("Offset of `", $path, "`.")] pub $field: u32, )*
        }

        impl KernelOffsets {
            /// All offsets zero: the placeholder compiled into the eBPF object.
            pub const fn zeroed() -> Self {
                Self { $( $field: 0, )* }
            }

            /// Every field with the `struct.member[.member]` path it is resolved from.
            pub const FIELDS: &'static [(&'static str, &'static str)] = &[
                $( (stringify!($field), $path), )*
            ];

            /// Sets a field by its Rust name; false if there is no such field.
            pub fn set(&mut self, name: &str, value: u32) -> bool {
                match name {
                    $( stringify!($field) => { self.$field = value; true } )*
                    _ => false,
                }
            }
        }
    };
}

kernel_offsets! {
    task_pid => "task_struct.pid",
    task_tgid => "task_struct.tgid",
    task_real_parent => "task_struct.real_parent",
    task_group_leader => "task_struct.group_leader",
    task_cred => "task_struct.cred",
    task_mm => "task_struct.mm",
    task_files => "task_struct.files",
    task_fs => "task_struct.fs",
    task_start_boottime => "task_struct.start_boottime",
    task_exit_code => "task_struct.exit_code",
    task_signal => "task_struct.signal",
    task_comm => "task_struct.comm",
    signal_live => "signal_struct.live",
    cred_uid => "cred.uid",
    cred_gid => "cred.gid",
    cred_suid => "cred.suid",
    cred_sgid => "cred.sgid",
    cred_euid => "cred.euid",
    cred_egid => "cred.egid",
    cred_fsuid => "cred.fsuid",
    cred_fsgid => "cred.fsgid",
    cred_cap_effective => "cred.cap_effective",
    mm_arg_start => "mm_struct.arg_start",
    mm_arg_end => "mm_struct.arg_end",
    bprm_file => "linux_binprm.file",
    bprm_filename => "linux_binprm.filename",
    bprm_interp => "linux_binprm.interp",
    file_f_path => "file.f_path",
    file_f_inode => "file.f_inode",
    file_private_data => "file.private_data",
    file_f_mode => "file.f_mode",
    file_f_flags => "file.f_flags",
    vma_vm_file => "vm_area_struct.vm_file",
    path_mnt => "path.mnt",
    path_dentry => "path.dentry",
    dentry_d_parent => "dentry.d_parent",
    dentry_d_name => "dentry.d_name",
    dentry_d_inode => "dentry.d_inode",
    qstr_len => "qstr.len",
    qstr_name => "qstr.name",
    vfsmount_mnt_root => "vfsmount.mnt_root",
    mount_mnt => "mount.mnt",
    mount_mnt_parent => "mount.mnt_parent",
    mount_mnt_mountpoint => "mount.mnt_mountpoint",
    inode_i_ino => "inode.i_ino",
    inode_i_mode => "inode.i_mode",
    inode_i_uid => "inode.i_uid",
    inode_i_nlink => "inode.i_nlink",
    inode_i_sb => "inode.i_sb",
    sb_s_dev => "super_block.s_dev",
    sb_s_magic => "super_block.s_magic",
    files_fdt => "files_struct.fdt",
    fdtable_max_fds => "fdtable.max_fds",
    fdtable_fd => "fdtable.fd",
    fs_pwd => "fs_struct.pwd",
    socket_type => "socket.type",
    socket_sk => "socket.sk",
    skc_family => "sock_common.skc_family",
    skc_num => "sock_common.skc_num",
    skc_dport => "sock_common.skc_dport",
    skc_daddr => "sock_common.skc_daddr",
    skc_rcv_saddr => "sock_common.skc_rcv_saddr",
    skc_v6_daddr => "sock_common.skc_v6_daddr",
    skc_v6_rcv_saddr => "sock_common.skc_v6_rcv_saddr",
    bpf_map_id => "bpf_map.id",
    bpf_link_id => "bpf_link.id",
    // Syscall arguments in the saved user registers (x86_64 calling
    // convention: di, si, dx, r10, r8, r9).
    regs_arg0 => "pt_regs.di",
    regs_arg1 => "pt_regs.si",
    regs_arg2 => "pt_regs.dx",
    regs_arg3 => "pt_regs.r10",
    regs_arg4 => "pt_regs.r8",
    regs_arg5 => "pt_regs.r9",
    regs_syscall_nr => "pt_regs.orig_ax",
}

/// Settings the agent writes into the programs' read-only data with the offsets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Must equal [`crate::ABI_VERSION`]; the programs do nothing otherwise.
    pub abi_version: u32,
    /// Process id of the agent: its own security-relevant syscalls are not
    /// reported (its bpf() calls, its signals), so it cannot feed itself.
    pub agent_pid: u32,
    /// Non-zero: count syscalls per thread (the `sys_enter` program).
    pub counts_enabled: u32,
    /// Non-zero: stash security syscalls' arguments at entry (the
    /// `sys_enter` program) for their exit programs.
    pub security_enabled: u32,
    /// Always zero.
    pub _pad0: u32,
    /// Non-zero: the `sched_process_exit` tracepoint passes `group_dead`
    /// (kernel 6.16+); otherwise the programs read `signal->live`.
    pub exit_has_group_dead: u32,
    /// Offset of the `opcode` field in the io_uring submit tracepoint's
    /// record (`io_uring_submit_req`, or `io_uring_submit_sqe` before 5.18),
    /// read from its tracefs format; 0: none, the program does nothing.
    pub io_uring_opcode_at: u32,
    /// Always zero.
    pub _pad1: u32,
}

impl ProbeConfig {
    /// All zero: the placeholder compiled into the eBPF object (programs idle).
    pub const fn zeroed() -> Self {
        Self {
            abi_version: 0,
            agent_pid: 0,
            counts_enabled: 0,
            security_enabled: 0,
            _pad0: 0,
            exit_has_group_dead: 0,
            io_uring_opcode_at: 0,
            _pad1: 0,
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: both are #[repr(C)] structs of u32 with no padding, valid for
    // any bit pattern.
    unsafe impl aya::Pod for super::KernelOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProbeConfig {}
}
