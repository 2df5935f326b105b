import COpenSSL
import Foundation

/// Owns one OpenSSL `X509`.
///
/// `@unchecked Sendable`: never modified after parsing; OpenSSL allows concurrent reads of an unmodified `X509`.
final class X509Box: @unchecked Sendable {
    let pointer: OpaquePointer

    init(taking pointer: OpaquePointer) {
        self.pointer = pointer
    }

    deinit {
        X509_free(pointer)
    }
}

/// An X.509 certificate, such as the PSD2 provider's eIDAS (QSEAL) certificate or one of its chain.
public struct Certificate: Sendable, CustomStringConvertible {
    let x509: X509Box

    /// The subject distinguished name in certificate order, RFC 2253 escaping: `CN=My App PISP AISP,C=NL`,
    /// the form bunq reports as `certificate_distinguished_name`.
    public let subject: String
    /// The issuer distinguished name, in the same form.
    public let issuer: String
    /// The subject's common name, if it has one.
    public let commonName: String?
    public let notBefore: Date
    public let notAfter: Date
    /// The certificate re-encoded as PEM (one block, trailing newline).
    public let pem: String

    /// Parses the first certificate in `pem`.
    public init(pem: String) throws {
        guard let block = try PEMBlock.blocks(in: pem).first(where: { $0.label == "CERTIFICATE" }) else {
            throw CryptoError(.invalidPEM, "no PEM certificate block found")
        }
        try self.init(block: block)
    }

    /// Parses every certificate in a PEM bundle (a chain), in order. Throws when there is none, or when any
    /// block fails to parse, naming its position.
    public static func chain(pem: String) throws -> [Certificate] {
        let blocks = try PEMBlock.blocks(in: pem).filter { $0.label == "CERTIFICATE" }
        guard !blocks.isEmpty else { throw CryptoError(.invalidPEM, "no PEM certificate block found") }
        return try blocks.enumerated().map { index, block in
            do {
                return try Certificate(block: block)
            } catch let error as CryptoError {
                throw CryptoError(error.code, "certificate \(index + 1) of \(blocks.count): \(error.message)",
                                  openSSLReason: error.openSSLReason)
            }
        }
    }

    init(block: PEMBlock) throws {
        OpenSSLErrorQueue.clear()
        let pointer = try MemoryBIO.reading(Array(block.text.utf8)) { PEM_read_bio_X509($0, nil, nil, nil) }
        guard let pointer else { throw CryptoError.openSSL(.invalidCertificate, "could not parse the certificate") }
        let box = X509Box(taking: pointer)
        self.x509 = box
        guard let subjectName = X509_get_subject_name(pointer), let issuerName = X509_get_issuer_name(pointer) else {
            throw CryptoError.openSSL(.invalidCertificate, "the certificate has no subject or issuer name")
        }
        self.subject = try Self.distinguishedName(subjectName)
        self.issuer = try Self.distinguishedName(issuerName)
        self.commonName = Self.commonName(subjectName)
        guard let notBefore = X509_get0_notBefore(pointer).flatMap(Self.date),
              let notAfter = X509_get0_notAfter(pointer).flatMap(Self.date)
        else {
            throw CryptoError.openSSL(.invalidCertificate, "the certificate's validity dates cannot be read")
        }
        self.notBefore = notBefore
        self.notAfter = notAfter
        let encoded = try MemoryBIO.writing(.invalidCertificate, "the certificate PEM") { PEM_write_bio_X509($0, pointer) }
        self.pem = String(decoding: encoded, as: UTF8.self)
    }

    /// The certificate's public key, or an error when it is not RSA of at least 2048 bits.
    public func publicKey() throws -> RSAPublicKey {
        guard let pointer = X509_get_pubkey(x509.pointer) else {
            throw CryptoError.openSSL(.invalidCertificate, "the certificate's public key cannot be read")
        }
        return RSAPublicKey(key: try EVPKey.requireRSA(pointer, "the certificate's public key"))
    }

    /// Whether `privateKey` is the private half of this certificate's public key.
    public func isMatched(by privateKey: RSAPrivateKey) -> Bool {
        let matches = X509_check_private_key(x509.pointer, privateKey.key.pointer) == 1
        OpenSSLErrorQueue.clear()
        return matches
    }

    /// Whether this certificate's signature verifies under `issuer`'s public key: one link of a chain.
    public func isSigned(by issuer: Certificate) -> Bool {
        guard let key = X509_get_pubkey(issuer.x509.pointer) else {
            OpenSSLErrorQueue.clear()
            return false
        }
        defer { EVP_PKEY_free(key) }
        let verified = X509_verify(x509.pointer, key) == 1
        OpenSSLErrorQueue.clear()
        return verified
    }

    /// Whether `date` lies within notBefore...notAfter.
    public func isValid(at date: Date) -> Bool {
        notBefore <= date && date <= notAfter
    }

    /// The PSD2 roles the common name names (e.g. `My App PISP AISP` names PISP and AISP).
    public var psd2Roles: Set<PSD2Role> {
        PSD2Role.named(in: commonName ?? "")
    }

    public var description: String {
        "Certificate(\(subject), valid \(notBefore) to \(notAfter))"
    }

    private static func distinguishedName(_ name: OpaquePointer) throws -> String {
        let bytes = try MemoryBIO.writing(.invalidCertificate, "a distinguished name") { bio in
            X509_NAME_print_ex(bio, name, 0, bsc_XN_FLAGS_SUBJECT) >= 0 ? 1 : 0
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func commonName(_ name: OpaquePointer) -> String? {
        let index = X509_NAME_get_index_by_NID(name, NID_commonName, -1)
        guard index >= 0, let entry = X509_NAME_get_entry(name, index),
              let data = X509_NAME_ENTRY_get_data(entry) else { return nil }
        var utf8: UnsafeMutablePointer<UInt8>?
        let length = ASN1_STRING_to_UTF8(&utf8, data)
        guard length >= 0, let utf8 else {
            OpenSSLErrorQueue.clear()
            return nil
        }
        defer { bsc_OPENSSL_free(utf8) }
        return String(decoding: UnsafeBufferPointer(start: utf8, count: Int(length)), as: UTF8.self)
    }

    private static func date(_ time: UnsafePointer<ASN1_TIME>) -> Date? {
        var parts = tm()
        guard ASN1_TIME_to_tm(time, &parts) == 1 else { return nil }
        return Date(timeIntervalSince1970: TimeInterval(timegm(&parts)))
    }
}

/// A PSD2 role a service provider's certificate can name.
public enum PSD2Role: String, Sendable, CaseIterable, Comparable {
    /// Account information service provider.
    case aisp = "AISP"
    /// Payment initiation service provider.
    case pisp = "PISP"
    /// Card-based payment instrument issuer.
    case cbpii = "CBPII"
    /// Account servicing payment service provider (a bank).
    case aspsp = "ASPSP"

    /// The roles named in `text` as whole words, by their common names (AISP, PISP, CBPII or PIISP, ASPSP) or
    /// their ETSI TS 119 495 codes (PSP_AI, PSP_PI, PSP_IC, PSP_AS).
    public static func named(in text: String) -> Set<PSD2Role> {
        let words = text.uppercased().split { !($0.isLetter || $0.isNumber || $0 == "_") }
        return Set(words.compactMap { word in
            switch word {
            case "AISP", "PSP_AI": .aisp
            case "PISP", "PSP_PI": .pisp
            case "CBPII", "PIISP", "PSP_IC": .cbpii
            case "ASPSP", "PSP_AS": .aspsp
            default: nil
            }
        })
    }

    public static func < (lhs: PSD2Role, rhs: PSD2Role) -> Bool {
        allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
    }
}
