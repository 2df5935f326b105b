import CSystemd
import Foundation

/// The systemd service manager as seen from the daemon: state notifications (sd_notify(3)), the watchdog, and
/// sockets passed by socket activation (sd_listen_fds(3)).
///
/// Outside systemd (no `$NOTIFY_SOCKET`, no `$LISTEN_FDS`) every call is a harmless no-op, so the daemon runs the
/// same way from a terminal, a test or a unit.
public enum ServiceManager {
    /// Sends `state` (newline-separated `KEY=VALUE` assignments such as `READY=1\nSTATUS=...`) to the service
    /// manager. Returns whether it was delivered; false outside systemd.
    @discardableResult
    public static func notify(_ state: String) -> Bool {
        sd_notify(0, state) > 0
    }

    /// `READY=1` with a status line.
    @discardableResult
    public static func ready(status: String) -> Bool { notify("READY=1\nSTATUS=\(status)") }

    /// A one-line human summary for `systemctl status`.
    @discardableResult
    public static func status(_ line: String) -> Bool { notify("STATUS=\(line)") }

    /// `RELOADING=1` with the `MONOTONIC_USEC` systemd 253+ wants; send `ready(status:)` when the reload is done.
    @discardableResult
    public static func reloading() -> Bool {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let usec = UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1_000
        return notify("RELOADING=1\nMONOTONIC_USEC=\(usec)")
    }

    @discardableResult
    public static func stopping() -> Bool { notify("STOPPING=1") }

    /// Asks for more start-up time while slow work runs before READY (`EXTEND_TIMEOUT_USEC`): the start job may
    /// now take until `duration` from now. Send it again before that passes.
    @discardableResult
    public static func extendStartup(by duration: Duration, status: String) -> Bool {
        let usec = duration.components.seconds * 1_000_000 + duration.components.attoseconds / 1_000_000_000_000
        return notify("EXTEND_TIMEOUT_USEC=\(usec)\nSTATUS=\(status)")
    }

    /// Keep-alive for the watchdog.
    @discardableResult
    public static func watchdog() -> Bool { notify("WATCHDOG=1") }

    /// The errno a failing start ends with, sent before exiting.
    @discardableResult
    public static func failed(errno code: Int32, status: String) -> Bool { notify("STATUS=\(status)\nERRNO=\(code)") }

    /// The watchdog interval (`WATCHDOG_USEC`), when systemd expects pings from this process (`WATCHDOG_PID`
    /// unset or ours); nil otherwise. Ping at half of it.
    public static var watchdogInterval: Duration? {
        var usec: UInt64 = 0
        guard sd_watchdog_enabled(0, &usec) > 0, usec > 0 else { return nil }
        return .microseconds(Int64(usec))
    }

    /// Whether this system was booted with systemd as init (sd_booted(3)).
    public static var isSystemdBooted: Bool {
        sd_booted() > 0
    }

    /// Sockets passed by socket activation, by `FileDescriptorName=` (unnamed ones are "unknown"). Their
    /// `LISTEN_*` variables are removed, so children do not inherit them.
    public static func listeningSockets() -> [(name: String, fd: Int32)] {
        var names: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
        let count = sd_listen_fds_with_names(1, &names)
        guard count > 0 else { return [] }
        defer {
            if let names {
                for index in 0..<Int(count) { free(names[index]) }
                free(names)
            }
        }
        return (0..<Int(count)).map { index in
            let name = names?[index].map { String(cString: $0) } ?? "unknown"
            return (name, SD_LISTEN_FDS_START + Int32(index))
        }
    }

    /// No core dumps, and no ptrace or /proc access by other processes of the same user: a core file or a
    /// debugger would hold the master key and every token. Called once at start (the unit adds `LimitCORE=0`).
    /// Returns whether both took effect.
    @discardableResult
    public static func disableCoreDumps() -> Bool {
        var none = rlimit(rlim_cur: 0, rlim_max: 0)
        let limited = setrlimit(__rlimit_resource_t(RLIMIT_CORE.rawValue), &none) == 0
        return bsc_set_not_dumpable() == 0 && limited
    }

    /// Returns the allocator's free memory to the system (glibc keeps freed memory in its arenas and gives back only
    /// the top of a heap): a daemon that served thousands of connections at once shrinks again when they leave.
    @Sendable public static func releaseFreeMemory() {
        _ = bsc_release_free_memory()
    }
}
