import ConfigFile
import Foundation

/// `renewal:` — when and how often sessions are renewed, and how often a caller may ask for one.
public struct RenewalSettings: ConfigSection, Equatable {
    public let policy: RenewalPolicy
    /// Renewals under way at once (`renewal.max_concurrent`).
    public let maxConcurrent: Int
    /// `session.renew` within this many seconds of the last renewal returns the current session (admins may
    /// force): a caller cannot spend the session-server budget others need.
    public let minManualInterval: TimeInterval

    public static let configKeys: [ConfigKeys] = [
        .mapping("renewal", ["safety_margin", "backoff_base", "backoff_max", "max_concurrent", "min_manual_interval"]),
    ]

    public init(reading config: ConfigReader) throws(ConfigurationError) {
        let margin = try config.int(["renewal", "safety_margin"], default: 60, range: 1...3_600)
        let backoffMax = try config.int(["renewal", "backoff_max"], default: 300, range: 1...3_600)
        let backoffBaseText = try config.string(["renewal", "backoff_base"]) ?? "1"
        guard let backoffBase = Double(backoffBaseText), backoffBase >= 0.01, backoffBase <= Double(backoffMax) else {
            throw config.fail("renewal.backoff_base", "must be seconds from 0.01 to renewal.backoff_max, not '\(backoffBaseText)'")
        }
        policy = RenewalPolicy(safetyMargin: TimeInterval(margin), backoffBase: backoffBase, backoffMax: TimeInterval(backoffMax))
        maxConcurrent = try config.int(["renewal", "max_concurrent"], default: 8, range: 1...256)
        minManualInterval = TimeInterval(try config.int(["renewal", "min_manual_interval"], default: 60, range: 0...86_400))
    }
}
