import Foundation

/// bunq's error reply, `{"Error": [{"error_description": "…", "error_description_translated": "…"}]}`: the first
/// description, or nil when the body is not that shape (an HTML page from a proxy, nothing, garbage).
struct BunqErrorBody: Decodable {
    struct Item: Decodable {
        let errorDescription: String?
        enum CodingKeys: String, CodingKey { case errorDescription = "error_description" }
    }

    let error: [Item]
    enum CodingKeys: String, CodingKey { case error = "Error" }

    static func description(in body: Data) -> String? {
        (try? JSONDecoder().decode(BunqErrorBody.self, from: body))?.error.first?.errorDescription
    }
}

/// The OAuth token endpoint's reply: the access token, or an OAuth error (`invalid_client`, `invalid_grant`, …).
struct OAuthTokenReply: Decodable {
    let accessToken: String?
    let error: String?
    let errorDescription: String?

    enum CodingKeys: String, CodingKey {
        case accessToken = "access_token", error, errorDescription = "error_description"
    }

    /// The reply, or nil when the body is not a JSON object of that shape.
    static func decode(_ body: Data) -> OAuthTokenReply? {
        try? JSONDecoder().decode(OAuthTokenReply.self, from: body)
    }
}
