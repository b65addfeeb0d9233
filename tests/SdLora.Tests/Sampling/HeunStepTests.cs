using SdLora.Sampling;
using TorchSharp;
using Xunit;

namespace SdLora.Tests.Sampling;

/// <summary>Heun's corrector against Karras et al.'s Alg. 1 written out in doubles (the fast suite had no check of it).</summary>
public class HeunStepTests
{
    [Theory]
    [InlineData(3.0, 1.5)]
    [InlineData(14.6, 9.7)]
    [InlineData(0.8, 0.03)]
    public void The_corrector_averages_the_slopes_at_both_sigmas(double sigma, double sigmaNext)
    {
        double[] x = [2.0, -1.25, 0.5], denoised = [0.5, 0.75, -0.1], xPredicted = [1.2, -0.4, 0.45], denoisedPredicted = [0.3, 0.6, -0.2];
        using var scope = torch.NewDisposeScope();
        var actual = HeunSampler.Step(torch.tensor(x), torch.tensor(denoised), torch.tensor(xPredicted), torch.tensor(denoisedPredicted), sigma, sigmaNext)
            .data<double>().ToArray();
        for (int i = 0; i < x.Length; i++)
        {
            double d = (x[i] - denoised[i]) / sigma;                           // slope at sigma
            double d2 = (xPredicted[i] - denoisedPredicted[i]) / sigmaNext;    // slope at sigmaNext, from the Euler prediction
            double expected = x[i] + (d + d2) / 2 * (sigmaNext - sigma);
            Assert.True(Math.Abs(actual[i] - expected) <= 1e-12 * Math.Max(1, Math.Abs(expected)), $"element {i}: {actual[i]} vs {expected}");
        }
    }
}
