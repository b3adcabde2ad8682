"""Flax linen modules of the bottleneck family: Gaussian encoders q(z|x); decoders of labels
(softmax) and of images (Bernoulli, Gaussian); the VIB classifier and the VAE that compose them.

Each module's `apply` is a pure function of an explicit params pytree, so training can vmap a whole
step over a sweep axis of stacked params and shard it across devices. Kernels use Glorot-uniform
initialisation and zero biases, the defaults of the TF layers in the paper's official demo.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vib_jax import losses

_glorot = nn.initializers.xavier_uniform()
ACTIVATIONS = {"relu": nn.relu, "tanh": nn.tanh}
# The Gaussian image likelihood's smallest stddev, in [0, 1] grey levels (a quarter of a grey
# level). MNIST's border pixels are 0 in every image: without a floor their density is unbounded.
MIN_PIXEL_STDDEV = 1.0 / 1024
COVARIANCES = ("diagonal", "full")


def check_activation(activation: str) -> None:
    """Raises ValueError naming `activation` unless it is a key of `ACTIVATIONS`."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}.")


def check_covariance(covariance: str) -> None:
    """Raises ValueError naming `covariance` unless it is one of `COVARIANCES`."""
    if covariance not in COVARIANCES:
        raise ValueError(f"covariance must be one of {COVARIANCES}, got {covariance!r}.")


def per_example_dropout(
    x: jax.Array, rate: jax.Array | float, keys: jax.Array, layer: int
) -> jax.Array:
    """Inverted dropout of activations `x` `[B, W]`: each unit is zeroed with probability `rate`
    (in [0, 1); a scalar, may be traced, e.g. swept) and the rest scaled by `1 / (1 - rate)`.

    Example i's mask is drawn from `fold_in(keys[i], layer)`, so it does not depend on the batch it
    is in or the device it lands on (the engine's noise rule). `rate = 0` returns `x` unchanged.
    """
    keep_probability = 1.0 - rate
    draw = lambda key: jax.random.bernoulli(
        jax.random.fold_in(key, layer), keep_probability, x.shape[1:]
    )
    keep = jax.vmap(draw)(keys)
    return jnp.where(keep, x / keep_probability, 0.0)


class MLP(nn.Module):
    """Dense layers with an activation between them (none after the last): `[B, D]` ->
    `[B, widths[-1]]`.

    Attributes:
      widths: the output width of each layer.
      activation: a key of `ACTIVATIONS`.
    """

    widths: Sequence[int]
    activation: str = "relu"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for index, width in enumerate(self.widths):
            if index:
                x = ACTIVATIONS[self.activation](x)
            x = nn.Dense(width, kernel_init=_glorot, name=f"dense_{index}")(x)
        return x


class GaussianEncoder(nn.Module):
    """The paper's encoder: an MLP (784-1024-1024 with ReLU) to the mean and scale of q(z|x).

    The stddevs are softplus(pre - stddev_shift), the paper's parameterisation: they start small
    (~6.7e-3 for pre = 0) so training begins near the deterministic network. With
    `covariance="full"` (the paper's K = 2 experiment) the scale is a Cholesky factor
    L = U diag(stddev), with U unit lower-triangular from K (K - 1) / 2 free outputs: every
    covariance U diag(stddev^2) U^T is reachable, and L starts as small as the stddevs. With
    `stochastic=False` the encoder has only the mean head and returns a zero stddev: the
    deterministic baseline, z = mean.

    Attributes:
      latent_dim: K, the bottleneck size.
      hidden_dims: widths of the hidden layers.
      stochastic: whether to produce a scale (VIB) or not (deterministic baseline).
      stddev_shift: the shift inside the softplus.
      activation: of the hidden layers, a key of `ACTIVATIONS` (the paper: ReLU; Burda et al.:
        tanh).
      covariance: "diagonal" (scale = stddevs `[B, K]`) or "full" (scale = L `[B, K, K]`).
    """

    latent_dim: int = 256
    hidden_dims: Sequence[int] = (1024, 1024)
    stochastic: bool = True
    stddev_shift: float = 5.0
    activation: str = "relu"
    covariance: str = "diagonal"

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        dropout_rate: jax.Array | float = 0.0,
        dropout_keys: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Maps images `[B, ...]` (flattened to `[B, D]`) to `(mean [B, K], scale)`.

        With `dropout_keys` (`[B]` keys, one per example), each hidden layer's activations go
        through `per_example_dropout` at `dropout_rate` (the dropout baseline's training).
        """
        hidden = jnp.reshape(x, (x.shape[0], -1))
        for index, width in enumerate(self.hidden_dims):
            dense = nn.Dense(width, kernel_init=_glorot, name=f"hidden_{index}")
            hidden = ACTIVATIONS[self.activation](dense(hidden))
            if dropout_keys is not None:
                hidden = per_example_dropout(hidden, dropout_rate, dropout_keys, index)
        k = self.latent_dim
        if not self.stochastic:
            mean = nn.Dense(k, kernel_init=_glorot, name="mean")(hidden)
            return mean, jnp.zeros_like(mean)
        if self.covariance == "diagonal":
            moments = nn.Dense(2 * k, kernel_init=_glorot, name="mean_and_stddev")(hidden)
            mean, pre_stddev = jnp.split(moments, 2, axis=-1)
            return mean, jax.nn.softplus(pre_stddev - self.stddev_shift)
        num_below = k * (k - 1) // 2
        outputs = nn.Dense(2 * k + num_below, kernel_init=_glorot, name="mean_and_scale")(hidden)
        mean, pre_stddev, below = jnp.split(outputs, (k, 2 * k), axis=-1)
        stddev = jax.nn.softplus(pre_stddev - self.stddev_shift)
        rows, columns = jnp.tril_indices(k, -1)
        unit_lower = (
            jnp.broadcast_to(jnp.eye(k), (*mean.shape, k)).at[..., rows, columns].set(below)
        )
        return mean, unit_lower * stddev[..., None, :]


class MixtureMarginal(nn.Module):
    """A learned marginal r(z): a mixture of `num_components` diagonal Gaussians over `[..., K]`
    latents, with learned weights, means and stddevs (`losses.mixture_log_prob`).

    The means start as draws from N(0, I) (distinct components), the stddevs at 1 and the weights
    equal, so r(z) starts near the standard normal prior it replaces.
    """

    num_components: int
    latent_dim: int

    def setup(self):
        shape = (self.num_components, self.latent_dim)
        self.logits = self.param("logits", nn.initializers.zeros, (self.num_components,))
        self.means = self.param("means", nn.initializers.normal(1.0), shape)
        # softplus(0.5413) = 1: unit stddevs at the start.
        self.pre_stddevs = self.param("pre_stddevs", nn.initializers.constant(0.5413), shape)

    def __call__(self, z: jax.Array) -> jax.Array:
        """Latents `[..., K]` -> log r(z) `[...]` in nats."""
        return losses.mixture_log_prob(z, *self.logits_means_stddevs())

    def logits_means_stddevs(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The components: logits of their weights `[M]`, means `[M, K]`, stddevs `[M, K]`."""
        return self.logits, self.means, jax.nn.softplus(self.pre_stddevs)


class CategoricalDecoder(nn.Module):
    """Softmax decoder q(y|z): logistic regression on z. Maps `[B, K]` latents to `[B, C]`
    logits."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        return nn.Dense(self.num_classes, kernel_init=_glorot, name="logits")(z)


class VIBOutput(NamedTuple):
    """What the classifier returns: logits `[S, B, C]`, and the posterior's mean `[B, K]` and scale
    (stddevs `[B, K]`, or Cholesky factors `[B, K, K]` for a full covariance)."""

    logits: jax.Array
    mean: jax.Array
    scale: jax.Array


class VIBClassifier(nn.Module):
    """Encoder, reparameterised sampling and decoder: the VIB classifier of Alemi et al. (2017).

    The encoder runs once per example; the decoder is vmapped over the leading Monte-Carlo axis of z
    (params shared), so any decoder written for `[B, K]` latents serves S samples at once.
    Training code may call `encode` and `decode` separately to draw the noise its own way.
    """

    latent_dim: int = 256
    num_classes: int = 10
    hidden_dims: Sequence[int] = (1024, 1024)
    stochastic: bool = True
    covariance: str = "diagonal"
    marginal_components: int = 0

    def setup(self):
        self.encoder = GaussianEncoder(
            self.latent_dim, self.hidden_dims, self.stochastic, covariance=self.covariance
        )
        if self.marginal_components:
            self.marginal = MixtureMarginal(self.marginal_components, self.latent_dim)
        sample_mapped_decoder = nn.vmap(
            CategoricalDecoder,
            variable_axes={"params": None},
            split_rngs={"params": False},
            in_axes=0,
            out_axes=0,
        )
        self.decoder = sample_mapped_decoder(self.num_classes)

    def encode(
        self,
        x: jax.Array,
        dropout_rate: jax.Array | float = 0.0,
        dropout_keys: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Images `[B, ...]` -> `(mean [B, K], scale)`: stddevs `[B, K]` or, for
        `covariance="full"`, Cholesky factors `[B, K, K]` (`GaussianEncoder`, also for the
        dropout arguments)."""
        return self.encoder(x, dropout_rate, dropout_keys)

    def decode(self, z: jax.Array) -> jax.Array:
        """Latents `[S, B, K]` -> logits `[S, B, C]`."""
        return self.decoder(z)

    def marginal_log_prob(self, z: jax.Array) -> jax.Array:
        """log r(z) `[...]` of latents `[..., K]`: the learned mixture when `marginal_components`
        > 0, else N(0, I)."""
        if self.marginal_components:
            return self.marginal(z)
        return losses.standard_normal_log_prob(z)

    def marginal_logits_means_stddevs(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The learned mixture's logits `[M]`, means `[M, K]` and stddevs `[M, K]`."""
        return self.marginal.logits_means_stddevs()

    def __call__(self, x: jax.Array, rng: jax.Array, num_samples: int = 1) -> VIBOutput:
        """Images `[B, ...]` and a key -> `VIBOutput` with S = num_samples posterior samples (and,
        with a learned marginal, its params initialised too)."""
        mean, scale = self.encode(x)
        z = losses.reparameterize(rng, mean, scale, num_samples)
        if self.marginal_components:
            self.marginal(z)  # creates the marginal's params
        return VIBOutput(self.decode(z), mean, scale)


class ImageDecoder(nn.Module):
    """p(x|z) over images: an MLP from latents `[..., K]` to per-pixel parameters `[..., D]`.

    `likelihood="bernoulli"` returns logits (binary pixels); `"gaussian"` returns the mean, and the
    module also holds one learned stddev per pixel (`pixel_stddev`: `MIN_PIXEL_STDDEV` plus the
    softplus of a parameter; the floor bounds the density of pixels that never vary), for
    grey levels in [0, 1]. Leading axes (samples, batch) pass through the dense layers unchanged.

    Attributes:
      hidden_dims: widths of the hidden layers (Burda et al.: 200, 200).
      output_dim: D, the number of pixels.
      likelihood: "bernoulli" or "gaussian".
      activation: of the hidden layers, a key of `ACTIVATIONS`.
    """

    hidden_dims: Sequence[int] = (200, 200)
    output_dim: int = 784
    likelihood: str = "bernoulli"
    activation: str = "tanh"

    def setup(self):
        self.net = MLP((*self.hidden_dims, self.output_dim), self.activation)
        if self.likelihood == "gaussian":
            self.pre_stddev = self.param("pre_stddev", nn.initializers.zeros, (self.output_dim,))

    def __call__(self, z: jax.Array) -> jax.Array:
        """Latents `[..., K]` -> logits (Bernoulli) or means (Gaussian), `[..., D]`."""
        return self.net(z)

    def pixel_stddev(self) -> jax.Array:
        """The Gaussian likelihood's stddev per pixel, `[D]` (> 0)."""
        return MIN_PIXEL_STDDEV + jax.nn.softplus(self.pre_stddev)


class VAE(nn.Module):
    """A variational autoencoder: a Gaussian encoder q(z|x) and an image decoder p(x|z).

    The beta-VAE is VIB with the input as the target (y = x); the encoder is the same module as the
    classifier's. Training code calls `encode` and `decode` to draw the noise its own way.

    Attributes:
      latent_dim: K.
      hidden_dims: widths of the encoder's hidden layers; the decoder's are the reverse.
      output_dim: D, the number of pixels.
      likelihood: "bernoulli" or "gaussian" (`ImageDecoder`).
      activation: of every hidden layer.
      stddev_shift: the shift inside the encoder's softplus.
      marginal: r(z), "standard_normal", "mixture" or "vamp" (`marginal_log_prob`).
      marginal_components: mixture components or pseudo-inputs (0 for N(0, I)).
    """

    latent_dim: int = 50
    hidden_dims: Sequence[int] = (200, 200)
    output_dim: int = 784
    likelihood: str = "bernoulli"
    activation: str = "tanh"
    stddev_shift: float = 0.0
    marginal: str = "standard_normal"
    marginal_components: int = 0

    def setup(self):
        self.encoder = GaussianEncoder(
            self.latent_dim, self.hidden_dims, True, self.stddev_shift, self.activation
        )
        self.decoder = ImageDecoder(
            tuple(reversed(self.hidden_dims)), self.output_dim, self.likelihood, self.activation
        )
        if self.marginal == "mixture":
            self.mixture = MixtureMarginal(self.marginal_components, self.latent_dim)
        elif self.marginal == "vamp":
            # Pseudo-input i is sigmoid(logits_i), a grey image; all start near 0.5.
            self.pseudo_input_logits = self.param(
                "pseudo_input_logits",
                nn.initializers.normal(0.01),
                (self.marginal_components, self.output_dim),
            )

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Images `[B, D]` -> `(mean, stddev)`, each `[B, K]`."""
        return self.encoder(x)

    def decode(self, z: jax.Array) -> jax.Array:
        """Latents `[..., K]` -> pixel logits or means `[..., D]`."""
        return self.decoder(z)

    def pixel_stddev(self) -> jax.Array:
        """The Gaussian likelihood's stddev per pixel `[D]` (only for `likelihood="gaussian"`)."""
        return self.decoder.pixel_stddev()

    def marginal_log_prob(self, z: jax.Array) -> jax.Array:
        """log r(z) `[...]` of latents `[..., K]`, in nats: N(0, I) ("standard_normal"), a learned
        mixture of `marginal_components` diagonal Gaussians ("mixture"), or the VampPrior ("vamp";
        Tomczak & Welling 2018): the equal-weight mixture of the posteriors q(z | u_i) of
        `marginal_components` learned pseudo-inputs u_i."""
        if self.marginal == "standard_normal":
            return losses.standard_normal_log_prob(z)
        return losses.mixture_log_prob(z, *self.marginal_logits_means_stddevs())

    def marginal_logits_means_stddevs(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """A learned marginal's components: logits of their weights `[M]` (equal for the
        VampPrior), means `[M, K]` and stddevs `[M, K]` (the pseudo-inputs' posteriors)."""
        if self.marginal == "mixture":
            return self.mixture.logits_means_stddevs()
        means, stddevs = self.encode(jax.nn.sigmoid(self.pseudo_input_logits))
        return jnp.zeros(self.marginal_components), means, stddevs

    def __call__(self, x: jax.Array) -> jax.Array:
        """Images `[B, D]` -> the decoder's output at z = the posterior mean (used to initialise
        every parameter, the marginal's too)."""
        mean, _ = self.encode(x)
        self.marginal_log_prob(mean)
        return self.decode(mean)


def _conv(lhs, rhs, strides, padding, dimension_numbers):
    return jax.lax.conv_general_dilated(
        lhs, rhs, strides, padding, dimension_numbers=dimension_numbers
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_matmul_kernel_gradient(lhs, rhs, strides, padding, dimension_numbers):
    return _conv(lhs, rhs, strides, padding, dimension_numbers)


def _conv_forward(lhs, rhs, strides, padding, dimension_numbers):
    return _conv(lhs, rhs, strides, padding, dimension_numbers), (lhs, rhs)


def _conv_backward(strides, padding, dimension_numbers, residuals, output_gradient):
    lhs, rhs = residuals
    _, input_vjp = jax.vjp(lambda x: _conv(x, rhs, strides, padding, dimension_numbers), lhs)
    height, width, in_features, out_features = rhs.shape
    # [B, OH, OW, in_features * height * width], features ordered (in_feature, row, column).
    patches = jax.lax.conv_general_dilated_patches(
        lhs, (height, width), strides, padding, dimension_numbers=dimension_numbers
    )
    kernel_gradient = patches.reshape(-1, in_features * height * width).T @ (
        output_gradient.reshape(-1, out_features)
    )
    kernel_gradient = kernel_gradient.reshape(in_features, height, width, out_features)
    return input_vjp(output_gradient)[0], kernel_gradient.transpose(1, 2, 0, 3)


_conv_matmul_kernel_gradient.defvjp(_conv_forward, _conv_backward)


def conv_with_matmul_kernel_gradient(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
) -> jax.Array:
    """`jax.lax.conv_general_dilated` for `nn.Conv(conv_general_dilated=...)`: the same forward
    and input gradient, with the kernel gradient computed as a matrix product of the input's
    patches (`jax.lax.conv_general_dilated_patches`) and the output gradient.

    Why: inside a scanned epoch, XLA:CPU computes a convolution's kernel gradient on a slow path
    (it leaves the transposed convolution in a layout its fast kernels do not take): 1.13 s for
    the InfoGAN's second convolution on 100 images, 24x its time outside a scan, and 12x these
    products' time inside one (dev-CPU). Equal to
    JAX's own gradient to float tolerance (tested). Takes images `[B, H, W, C]`, kernels
    `[h, w, C, F]` (flax's layouts), no dilation, no groups.
    """
    dilated = any(d not in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
    if dilated or feature_group_count != 1 or batch_group_count != 1:
        raise ValueError(
            "conv_with_matmul_kernel_gradient takes no dilation and no groups, got "
            f"lhs_dilation={lhs_dilation}, rhs_dilation={rhs_dilation}, "
            f"feature_group_count={feature_group_count}, batch_group_count={batch_group_count}."
        )
    if precision is not None or preferred_element_type is not None:
        raise ValueError(
            "conv_with_matmul_kernel_gradient computes in the inputs' dtype at the default "
            f"precision, got precision={precision}, "
            f"preferred_element_type={preferred_element_type}."
        )
    lhs, rhs = _varying_alike(lhs, rhs)
    return _conv_matmul_kernel_gradient(lhs, rhs, window_strides, padding, dimension_numbers)


def _varying_alike(*arrays: jax.Array) -> list[jax.Array]:
    """`arrays`, each made to vary over every device axis (of `jax.shard_map`) that one of them
    varies over: a custom gradient must return a replicated kernel's gradient replicated, which
    the cast's own transpose (a sum over the devices) then does."""
    axes = lambda x: jax.typeof(x).manual_axis_type.varying
    union = frozenset().union(*map(axes, arrays))
    return [
        jax.lax.pcast(x, tuple(union - axes(x)), to="varying") if union - axes(x) else x
        for x in arrays
    ]


class TransposedConv2x(nn.Module):
    """A 4x4 transposed convolution of stride 2, `[B, H, W, C]` -> `[B, 2H, 2W, features]`, in its
    sub-pixel form (Shi et al. 2016): a 2x2 convolution to 4 x `features` channels, one group per
    output phase, then depth-to-space.

    Its kernels correspond one to one with those of a 4x4 transposed convolution: it equals
    `jax.lax.conv_transpose` with padding (1, 3) on each side (tested), which is TF's and flax's
    "SAME" layer shifted by one output pixel (its zero border at the bottom and right rather than
    split). This form exists for speed: XLA:CPU computes the kernel gradient of
    `nn.ConvTranspose` (an input-dilated convolution) on a slow path, 7x slower than this form's
    at the InfoGAN's first upsampling (0.52 s against 0.073 s for 100 images, dev-CPU).
    """

    features: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        phases = nn.Conv(
            4 * self.features,
            (2, 2),
            padding=((0, 1), (0, 1)),
            use_bias=False,
            conv_general_dilated=conv_with_matmul_kernel_gradient,
        )(x)
        batch, height, width, _ = phases.shape
        h = phases.reshape(batch, height, width, 2, 2, self.features).transpose(0, 1, 3, 2, 4, 5)
        h = h.reshape(batch, 2 * height, 2 * width, self.features)
        if self.use_bias:
            h = h + self.param("bias", nn.initializers.zeros, (self.features,))
        return h


def _batch_norm(train: bool, axis_name: str | None) -> nn.BatchNorm:
    """Batch normalisation as DCGAN and InfoGAN use it: in training, the statistics of the whole
    batch (over the devices of `axis_name` when it is split across them), updating running
    averages (momentum 0.9) in the `batch_stats` collection; in evaluation, those averages."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, axis_name=axis_name)


class InfoGANGenerator(nn.Module):
    """G(noise, codes): Chen et al. (2016)'s MNIST generator, latents `[B, L]` -> images `[B, H*W]`
    in [-1, 1] (tanh, the loader's pixel range).

    FC 1024 - BN - ReLU, FC (H/4)(W/4) 128 - BN - ReLU, 4x4 transposed conv 64 stride 2 - BN -
    ReLU, 4x4 transposed conv 1 stride 2. Dense layers before batch norm have no bias (the norm's
    offset replaces it).

    Attributes:
      image_shape: (H, W), each divisible by 4.
      hidden_dim: width of the first layer.
      channels: channels of the (H/4, W/4) and (H/2, W/2) feature maps.
      batch_axis_name: the device axis of the batch, for its statistics (None: one device).
    """

    image_shape: tuple[int, int] = (28, 28)
    hidden_dim: int = 1024
    channels: tuple[int, int] = (128, 64)
    batch_axis_name: str | None = None

    @nn.compact
    def __call__(self, latents: jax.Array, train: bool) -> jax.Array:
        height, width = (side // 4 for side in self.image_shape)
        norm = lambda h: _batch_norm(train, self.batch_axis_name)(h)
        h = nn.relu(norm(nn.Dense(self.hidden_dim, use_bias=False)(latents)))
        h = nn.relu(norm(nn.Dense(height * width * self.channels[0], use_bias=False)(h)))
        h = h.reshape(-1, height, width, self.channels[0])
        h = TransposedConv2x(self.channels[1], use_bias=False)(h)
        h = TransposedConv2x(1)(nn.relu(norm(h)))
        return jnp.tanh(h).reshape(h.shape[0], -1)


class DiscriminatorOutput(NamedTuple):
    """What the InfoGAN discriminator returns for images `[B, ...]`: D's logits `[B]` (the
    probability that an image is data is their sigmoid), Q's logits of the categorical code
    `[B, C]`, and Q's means of the continuous codes `[B, K_c]`."""

    logits: jax.Array
    code_logits: jax.Array
    continuous_means: jax.Array


class InfoGANDiscriminator(nn.Module):
    """D and the recognition network Q, sharing a body (Chen et al. 2016, MNIST): images `[B, H*W]`
    -> `DiscriminatorOutput`.

    Body: 4x4 conv 64 stride 2 - leaky ReLU, 4x4 conv 128 stride 2 - BN - leaky ReLU, FC 1024 - BN
    - leaky ReLU (slope 0.1). D: FC 1. Q: FC 128 - BN - leaky ReLU, FC to the categorical code's
    logits and the continuous codes' means.

    Attributes:
      categorical_dim: C, values of the categorical code.
      continuous_dim: K_c, continuous codes.
      image_shape: (H, W).
      channels: of the two convolutions.
      hidden_dim: width of the body's dense layer.
      q_hidden_dim: width of Q's hidden layer.
      batch_axis_name: the device axis of the batch, for its statistics (None: one device).
    """

    categorical_dim: int = 10
    continuous_dim: int = 2
    image_shape: tuple[int, int] = (28, 28)
    channels: tuple[int, int] = (64, 128)
    hidden_dim: int = 1024
    q_hidden_dim: int = 128
    batch_axis_name: str | None = None

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> DiscriminatorOutput:
        norm = lambda h: _batch_norm(train, self.batch_axis_name)(h)
        leaky = lambda h: nn.leaky_relu(h, 0.1)
        h = images.reshape(-1, *self.image_shape, 1)
        conv = functools.partial(
            nn.Conv,
            kernel_size=(4, 4),
            strides=(2, 2),
            padding="SAME",
            conv_general_dilated=conv_with_matmul_kernel_gradient,
        )
        h = leaky(conv(self.channels[0])(h))
        h = conv(self.channels[1], use_bias=False)(h)
        h = leaky(norm(h)).reshape(h.shape[0], -1)
        h = leaky(norm(nn.Dense(self.hidden_dim, use_bias=False)(h)))
        logits = nn.Dense(1, name="d_logit")(h)[:, 0]
        q = leaky(norm(nn.Dense(self.q_hidden_dim, use_bias=False, name="q_hidden")(h)))
        q = nn.Dense(self.categorical_dim + self.continuous_dim, name="q_codes")(q)
        return DiscriminatorOutput(
            logits, q[:, : self.categorical_dim], q[:, self.categorical_dim :]
        )


class InfoGAN(nn.Module):
    """An InfoGAN: `generator` and `discriminator` (with Q) in one variables tree
    (`{"params": {"generator": ..., "discriminator": ...}, "batch_stats": {...}}`).

    Latents are `[noise, one_hot(categorical code), continuous codes]`, `[B, noise_dim + C + K_c]`.
    `train=True` normalises with the batch's statistics and needs `mutable=["batch_stats"]`.
    `hidden_dim` and `channels` are the discriminator's (its dense layer, its convolutions); the
    generator mirrors them (Chen et al.: 1024, (64, 128)).
    """

    categorical_dim: int = 10
    continuous_dim: int = 2
    noise_dim: int = 62
    image_shape: tuple[int, int] = (28, 28)
    hidden_dim: int = 1024
    channels: tuple[int, int] = (64, 128)
    q_hidden_dim: int = 128
    batch_axis_name: str | None = None

    def setup(self):
        self.generator = InfoGANGenerator(
            self.image_shape,
            self.hidden_dim,
            tuple(reversed(self.channels)),
            batch_axis_name=self.batch_axis_name,
        )
        self.discriminator = InfoGANDiscriminator(
            self.categorical_dim,
            self.continuous_dim,
            self.image_shape,
            tuple(self.channels),
            self.hidden_dim,
            self.q_hidden_dim,
            batch_axis_name=self.batch_axis_name,
        )

    def generate(self, latents: jax.Array, train: bool) -> jax.Array:
        """Latents `[B, L]` -> images `[B, H*W]` in [-1, 1]."""
        return self.generator(latents, train)

    def discriminate(self, images: jax.Array, train: bool) -> DiscriminatorOutput:
        """Images `[B, H*W]` -> D's logits and Q's outputs."""
        return self.discriminator(images, train)

    def __call__(self, latents: jax.Array) -> DiscriminatorOutput:
        """Creates every variable (evaluation mode): D and Q on G(latents)."""
        return self.discriminate(self.generate(latents, False), False)


def count_params(params) -> int:
    """The number of scalars in a params pytree."""
    return sum(int(leaf.size) for leaf in jax.tree_util.tree_leaves(params))
