import CSystemd

/// The systemd service manager as seen from the daemon: state notifications per sd_notify(3).
///
/// Outside systemd (no `$NOTIFY_SOCKET`) every call is a harmless no-op, so the daemon runs the same way from a
/// terminal, a test or a unit.
public enum ServiceManager {
    /// Sends `state` (newline-separated `KEY=VALUE` assignments such as `READY=1\nSTATUS=...`) to the service
    /// manager. Returns whether it was delivered; false outside systemd.
    @discardableResult
    public static func notify(_ state: String) -> Bool {
        sd_notify(0, state) > 0
    }

    /// Whether this system was booted with systemd as init (sd_booted(3)).
    public static var isSystemdBooted: Bool {
        sd_booted() > 0
    }
}
