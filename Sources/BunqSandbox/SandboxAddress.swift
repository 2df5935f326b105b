import DynamicJSON
import Foundation

/// IP address rules of device-server's `permitted_ips`.
enum SandboxAddress {
    /// Whether `text` is an IPv4 or IPv6 address (the swagger: "An array of IPs (v4 or v6)").
    static func isValid(_ text: String) -> Bool {
        normalized(text) != nil
    }

    /// Whether two addresses are the same, comparing their binary forms (`::ffff:1.2.3.4` is `1.2.3.4`).
    static func same(_ lhs: String, _ rhs: String) -> Bool {
        guard let left = normalized(lhs), let right = normalized(rhs) else { return lhs == rhs }
        return left == right
    }

    /// The 16-byte form (IPv4 as IPv4-mapped IPv6), or nil when `text` is no address.
    private static func normalized(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            return [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF] + withUnsafeBytes(of: &v4) { Array($0) }
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 { return withUnsafeBytes(of: &v6) { Array($0) } }
        return nil
    }

    /// Parses `permitted_ips`: absent or null is nil (bind to the caller); otherwise an array of addresses or
    /// `"*"`, at least one, or a 400 naming the field.
    static func permittedIPs(_ value: JSONValue?) throws(SandboxError) -> [String]? {
        guard let value, value != .null else { return nil }
        let invalid = SandboxError.badRequest(
            "Field permitted_ips must be an array of IP addresses (v4 or v6) or \"*\".")
        guard let list = value.array, !list.isEmpty else { throw invalid }
        var ips: [String] = []
        for item in list {
            guard let ip = item.string, ip == "*" || isValid(ip) else { throw invalid }
            ips.append(ip)
        }
        return ips
    }
}
