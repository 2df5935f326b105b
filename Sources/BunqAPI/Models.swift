import DynamicJSON
import Foundation

/// The user a session acts as, as session-server reported it.
public struct SessionUser: Sendable, Equatable {
    public enum Kind: String, Sendable, Equatable {
        case person = "UserPerson"
        case company = "UserCompany"
        case serviceProvider = "UserPaymentServiceProvider"
        /// An OAuth grant: a provider (`requestedBy`) acting for a user (`grantedBy`).
        case apiKey = "UserApiKey"
    }

    public struct Party: Sendable, Equatable {
        public let kind: Kind
        public let id: Int
        public let displayName: String?
        public let sessionTimeout: Int?
    }

    public let kind: Kind
    /// The id to use as `{userID}` in later URLs.
    public let id: Int
    public let displayName: String?
    /// The `session_timeout` that governs this session: the user's own, or for `UserApiKey` the requesting
    /// user's, as bunq's SDKs read it.
    public let sessionTimeout: Int
    public let requestedBy: Party?
    public let grantedBy: Party?

    static func parse(type: String, _ object: JSONObject) throws(BunqAPIError) -> SessionUser {
        guard let kind = Kind(rawValue: type) else {
            throw BunqAPIError(.protocolError, endpoint: object.context, message: "unknown user type \(type)")
        }
        let id = try object.int("id")
        let name = object.raw["display_name"]?.string
        guard kind == .apiKey else {
            return SessionUser(kind: kind, id: id, displayName: name, sessionTimeout: try object.int("session_timeout"),
                               requestedBy: nil, grantedBy: nil)
        }
        let requested = try party(object.object("requested_by_user"))
        let granted = try party(object.object("granted_by_user"))
        guard let timeout = requested.sessionTimeout else {
            throw BunqAPIError(.protocolError, endpoint: object.context,
                               message: "requested_by_user has no session_timeout")
        }
        return SessionUser(kind: kind, id: id, displayName: granted.displayName, sessionTimeout: timeout,
                           requestedBy: requested, grantedBy: granted)
    }

    private static func party(_ anchor: JSONObject) throws(BunqAPIError) -> Party {
        let (type, object) = try anchor.anchored()
        guard let kind = Kind(rawValue: type), kind != .apiKey else {
            throw BunqAPIError(.protocolError, endpoint: anchor.context, message: "unexpected user type \(type)")
        }
        return Party(kind: kind, id: try object.int("id"), displayName: object.raw["display_name"]?.string,
                     sessionTimeout: object.raw["session_timeout"]?.integer)
    }
}

/// A live bunq session: what the daemon hands out, and when it stops working.
public struct BunqSession: Sendable, Equatable {
    public let id: Int
    /// The session token (`X-Bunq-Client-Authentication`). Secret.
    public let token: String
    /// Our clock when the request that created it was sent: the anchor of its expiry.
    public let created: Date
    /// `created` plus the lifetime that applies (see `BunqClient.createSession`).
    public let expiresAt: Date
    /// When bunq says it created it (server time, from `Token.created`): a cross-check of the two clocks only.
    public let serverCreated: Date
    public let user: SessionUser

    public init(id: Int, token: String, created: Date, expiresAt: Date, serverCreated: Date, user: SessionUser) {
        self.id = id
        self.token = token
        self.created = created
        self.expiresAt = expiresAt
        self.serverCreated = serverCreated
        self.user = user
    }
}

/// The result of `POST /v1/installation`.
public struct InstallationResult: Sendable, Equatable {
    public let id: Int
    /// The installation token, for device-server, session-server and PSD2 registration. Secret.
    public let token: String
    /// bunq's key that signs every reply to this installation.
    public let serverPublicKeyPEM: String
}

/// An OAuth client of the provider, with its credentials.
public struct OAuthClientInfo: Sendable, Equatable {
    public let id: Int
    public let status: String
    public let clientId: String
    /// The client secret. Secret.
    public let secret: String
    public let callbackURLs: [String]
}
