import BunqCrypto
import Foundation

/// A bunq user the emulator knows: a sandbox person or company, or a PSD2 service provider.
struct SandboxUser: Sendable {
    enum Kind: String, Sendable {
        case person = "UserPerson"
        case company = "UserCompany"
        case serviceProvider = "UserPaymentServiceProvider"
    }

    let id: Int
    let kind: Kind
    let created: Date
    let displayName: String
    let publicUUID: String
    /// The IBAN of the user's first account, shown as the user's alias (persons and companies).
    let iban: String?
    /// The user's email and phone aliases (persons and companies): a payment or a request can name the user by
    /// either, and reaches the user's first account.
    var email: String?
    var phone: String?
    /// The subject DN of a service provider's certificate.
    let certificateDN: String?
    /// The user's own `session_timeout` (`/_sandbox/users/session-timeout`); nil: the configured default.
    var sessionTimeout: Int?
}

/// A monetary account of a sandbox user: `MonetaryAccountBank` for everyone with accounts, plus savings and joint
/// accounts for some, as real bunq users have.
struct MonetaryAccount: Sendable {
    enum Kind: String, Sendable, CaseIterable {
        case bank = "MonetaryAccountBank"
        case savings = "MonetaryAccountSavings"
        case joint = "MonetaryAccountJoint"

        /// The path segment of the type's own list, e.g. `monetary-account-savings`.
        var pathSegment: String {
            switch self {
            case .bank: "monetary-account-bank"
            case .savings: "monetary-account-savings"
            case .joint: "monetary-account-joint"
            }
        }
    }

    let id: Int
    let kind: Kind
    let ownerId: Int
    let created: Date
    let iban: String
    let description: String
}

/// What a secret (API key, PSD2 `token_value`, OAuth access token) stands for.
struct Credential: Sendable {
    enum Kind: Sendable {
        case apiKey(userId: Int)
        case psd2(userId: Int)
        /// An OAuth access token: sessions opened with it belong to the `UserApiKey` `apiKeyUserId`.
        case oauth(apiKeyUserId: Int)
    }

    let kind: Kind
    /// When it was issued: an unbound secret can be bound only within `apiKeyBindWindow` of this.
    let issued: Date
    var revoked = false
    var sessionsStarted = 0
    /// Whether a device was registered with it: from then on no bind window applies.
    var bound = false
    /// For a PSD2 `token_value`: the id of its `CredentialPasswordIp`.
    var psd2CredentialId: Int?

    /// The user whose devices and sessions the secret makes.
    var userId: Int {
        switch kind {
        case .apiKey(let id), .psd2(let id): id
        case .oauth(let id): id
        }
    }
}

/// A provider's `CredentialPasswordIp` (`POST /v1/payment-service-provider-credential`): `PENDING_FIRST_USE`
/// until a device is registered with its `token_value`, then `ACTIVE` with that device as `permitted_device`.
struct PSD2CredentialRecord: Sendable {
    let id: Int
    let created: Date
    let userId: Int
    let tokenValue: String
    let expiry: Date
    var activated: Date?
    var permittedDeviceId: Int?
}

/// A `UserApiKey`: the identity of an OAuth grant, requested by a provider and granted by a user.
struct UserApiKey: Sendable {
    let id: Int
    let created: Date
    let requestingUserId: Int
    let grantingUserId: Int
}

struct Installation: Sendable {
    let id: Int
    let tokenId: Int
    let token: String
    let created: Date
    let clientPublicKey: RSAPublicKey
    /// The PEM exactly as the client sent it (for the PSD2 string-to-sign).
    let clientPublicKeyPEM: String
    let serverKeyIndex: Int
}

/// A secret registered as a device (`POST /v1/device-server`) on one installation: what session-server requires.
struct DeviceBinding: Sendable, Hashable {
    let installationId: Int
    let secret: String
}

/// A `DeviceServer`: a secret bound to an installation and to the addresses it may be used from.
struct Device: Sendable {
    let id: Int
    let installationId: Int
    let secret: String
    let description: String
    /// The address the device was registered from.
    let ip: String
    /// `permitted_ips` as given; nil (not given): the registering address only.
    let permittedIPs: [String]?
    let created: Date

    /// Whether calls from `address` may use this device: `"*"` allows any; otherwise the permitted list, or the
    /// registering address when none was given.
    func permits(_ address: String) -> Bool {
        guard let permittedIPs else { return SandboxAddress.same(address, ip) }
        return permittedIPs.contains { $0 == "*" || SandboxAddress.same(address, $0) }
    }
}

struct Session: Sendable {
    let id: Int
    let tokenId: Int
    let token: String
    let installationId: Int
    /// The device it was opened through: its addresses bound every request the session makes.
    let deviceId: Int
    /// The secret it was opened with (revoking the secret ends it).
    let secret: String
    /// The id of the session's user object (for an OAuth session: the `UserApiKey`).
    let userId: Int
    let created: Date
    /// Moves later only with `sessionExtensionSeconds`.
    var expiresAt: Date
    var ended = false

    func isLive(at now: Date) -> Bool { !ended && now < expiresAt }
}

struct OAuthCallback: Sendable {
    let id: Int
    let created: Date
    let url: String
}

struct OAuthClient: Sendable {
    let id: Int
    let userId: Int
    let created: Date
    var updated: Date
    var status: String
    let clientId: String
    let secret: String
    var callbacks: [OAuthCallback] = []
}

struct AuthorizationCode: Sendable {
    let clientId: String
    let redirectURI: String
    let state: String?
    let grantingUserId: Int
    let expiresAt: Date
    var used = false
}

/// Counters for `GET /_sandbox/stats`.
struct SandboxStats: Sendable {
    var installations = 0
    var deviceServers = 0
    var sessionsCreated = 0
    var rejectedSignatures = 0
    var rateLimited = 0
    var sessionsKilled = 0
    var requestIdsRejected = 0
    var requests: [String: Int] = [:]
}

/// The request ids an installation has used, so a reuse is refused. Bounded: the oldest are forgotten past
/// `capacity` (a client reusing an id that old is not what this check is for).
struct RequestIdLog: Sendable {
    static let capacity = 65_536
    private var seen: Set<String> = []
    private var order: [String] = []
    private var next = 0

    /// Records `id`; false when it was seen before.
    mutating func record(_ id: String) -> Bool {
        guard seen.insert(id).inserted else { return false }
        if order.count < Self.capacity {
            order.append(id)
        } else {
            seen.remove(order[next])
            order[next] = id
            next = (next + 1) % Self.capacity
        }
        return true
    }
}
