import MartProto

/// A payment provider (`mart.common.v1.PaymentProvider`) as the order and payment databases
/// store it: its name in lower case.
public enum PaymentProvider: String, PostgresTextEnum, CaseIterable {
  case sandbox, stripe, payfast

  public var proto: Mart_Common_V1_PaymentProvider {
    switch self {
    case .sandbox: .sandbox
    case .stripe: .stripe
    case .payfast: .payfast
    }
  }

  /// nil for UNSPECIFIED and for values this build does not know.
  public init?(_ proto: Mart_Common_V1_PaymentProvider) {
    switch proto {
    case .sandbox: self = .sandbox
    case .stripe: self = .stripe
    case .payfast: self = .payfast
    case .unspecified, .UNRECOGNIZED: return nil
    }
  }
}
