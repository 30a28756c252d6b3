"""Convert a torchvision MobileNetV2, print the conversion report, and check that one SGD
training step gives the same loss and parameters as the unconverted model (float64)."""

import copy

import torch
import torchvision

import diagonalwise as dw


def main() -> None:
    torch.manual_seed(0)
    native = torchvision.models.mobilenet_v2(weights=None).double()
    report = dw.ConversionReport()
    converted = dw.convert(copy.deepcopy(native), report=report)
    print(report)

    x = torch.randn(4, 3, 96, 96, dtype=torch.float64)
    y = torch.randint(0, 1000, (4,))
    losses = []
    for model in (native, converted):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        torch.manual_seed(1)  # same dropout mask for both
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    worst = max((p - q).abs().max().item()
                for p, q in zip(native.parameters(), converted.parameters()))
    print(f"\none SGD step, float64: loss native {losses[0]:.12f}, converted {losses[1]:.12f}; "
          f"largest parameter difference after the step {worst:.2e}")
    if abs(losses[0] - losses[1]) > 1e-9 or worst > 1e-9:
        raise SystemExit("MISMATCH: the converted model does not reproduce the native one")
    print("equivalent: same loss and parameters to float64 rounding")


if __name__ == "__main__":
    main()
