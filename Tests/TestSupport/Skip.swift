import Foundation

/// A test that cannot run here says so; under `CI=true` (CI runs as root, with every package) it must run, so
/// not running is a failure there.
public enum Skip {
    /// Prints `SKIPPED: reason`; returns true when the environment demands the test run (`CI=true`): the caller
    /// then fails, `#expect(!Skip.report(...))`.
    public static func report(_ reason: String) -> Bool {
        print("SKIPPED: \(reason)")
        return ProcessInfo.processInfo.environment["CI"] == "true"
    }
}
