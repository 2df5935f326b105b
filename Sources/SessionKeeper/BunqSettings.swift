import BunqAPI
import ConfigFile
import Foundation

/// `bunq:` — which bunq, within which limits, from which address.
public struct BunqSettings: ConfigSection, Equatable {
    public let endpoints: BunqEndpoints
    public let environment: BunqEndpoints.Environment
    public let rateLimits: BunqRateLimiter.Mode
    /// Testing only: multiplies bunq's rate-limit windows on our side (pair with `bunq-sandbox --rate-limit-scale`).
    public let rateLimitScale: Double
    public let psd2FirstSessionTimeout: Int
    /// `permitted_ips` of every device this daemon registers: this host's (or cluster's) egress addresses, or
    /// `"*"` (any). Applies to devices registered from now on; existing ones keep what they were given.
    public let permittedIPs: [String]
    /// The local address calls to bunq leave from (`bunq.source_address`); nil: the kernel's choice.
    public let sourceAddress: String?

    public static let configKeys: [ConfigKeys] = [
        .mapping("bunq", ["environment", "api_base_url", "oauth_authorize_url", "oauth_token_url", "ca_file", "rate_limits",
                          "rate_limit_scale", "psd2_first_session_timeout", "permitted_ips", "source_address"]),
    ]

    public init(reading config: ConfigReader) throws(ConfigurationError) {
        let environmentName = try config.string(["bunq", "environment"]) ?? "sandbox"
        guard let environment = BunqEndpoints.Environment(rawValue: environmentName) else {
            throw config.fail("bunq.environment", "must be sandbox or production, not '\(environmentName)'")
        }
        let preset = BunqEndpoints.preset(environment)
        let apiBase = try config.string(["bunq", "api_base_url"]) ?? preset.apiBaseURL
        let authorize = try config.string(["bunq", "oauth_authorize_url"]) ?? preset.oauthAuthorizeURL
        let token = try config.string(["bunq", "oauth_token_url"]) ?? preset.oauthTokenURL
        let caFile = try config.string(["bunq", "ca_file"])
        do {
            endpoints = try BunqEndpoints(apiBaseURL: apiBase, oauthAuthorizeURL: authorize, oauthTokenURL: token,
                                          caFile: caFile)
        } catch {
            throw config.fail("bunq.\(error.key)", "\(error.url) \(error.reason)")
        }
        if let caFile = endpoints.caFile, !FileManager.default.isReadableFile(atPath: caFile) {
            throw config.fail("bunq.ca_file", "the file \(caFile) cannot be read")
        }
        self.environment = environment
        let limitsName = try config.string(["bunq", "rate_limits"]) ?? "bunq"
        guard let rateLimits = BunqRateLimiter.Mode(rawValue: limitsName) else {
            throw config.fail("bunq.rate_limits", "must be bunq or unlimited, not '\(limitsName)'")
        }
        self.rateLimits = rateLimits
        var rateLimitScale = 1.0
        if let scaleText = try config.string(["bunq", "rate_limit_scale"]) {
            guard let scale = Double(scaleText), scale >= 0.001, scale <= 1 else {
                throw config.fail("bunq.rate_limit_scale", "must be a number from 0.001 to 1, not '\(scaleText)'")
            }
            guard rateLimits == .bunq else {
                throw config.fail("bunq.rate_limit_scale", "scales bunq's limits: it cannot be used with rate_limits: unlimited")
            }
            rateLimitScale = scale
        }
        self.rateLimitScale = rateLimitScale
        psd2FirstSessionTimeout = try config.int(["bunq", "psd2_first_session_timeout"], default: 3_600, range: 1...86_400)
        var permittedIPs = ["*"]
        if config.isGiven(["bunq", "permitted_ips"]) {
            permittedIPs = try config.strings(["bunq", "permitted_ips"])
            guard !permittedIPs.isEmpty else {
                throw config.fail("bunq.permitted_ips", "must list at least one IP address or \"*\"")
            }
            for ip in permittedIPs where ip != "*" && !IPAddressText.isValid(ip) {
                throw config.fail("bunq.permitted_ips", "'\(ip)' is not an IP address (v4 or v6) or \"*\"")
            }
        }
        self.permittedIPs = permittedIPs
        sourceAddress = try config.string(["bunq", "source_address"])
        if let sourceAddress, !IPAddressText.isValid(sourceAddress) {
            throw config.fail("bunq.source_address", "'\(sourceAddress)' is not an IP address (v4 or v6)")
        }
    }
}
