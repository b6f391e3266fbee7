"""Small CNN trained with Adam on a folder of real JPEG files through a DataLoader, in img/s."""

# The first model of a practitioner's guide: conv -> ReLU -> max-pool -> two linear layers,
# cross-entropy and Adam, fed by ImageFolder + Resize + ToTensor + DataLoader from files on disk.
# The data-wait share of each window tells an input-bound step from a compute-bound one.
PARAMS = {
    "num_workers": [0, 4, 8],
    "pin_memory": [False, True],
    "batch": [64],
    "image": [224],
}
PROFILES = {
    "quick": {"num_workers": [0, 2], "pin_memory": [False], "batch": [16], "image": [64]},
}
CLASSES = 4
# Files are written a little larger than the model's input, so Resize does real work.
SOURCE_SCALE = 8 / 7


def images_per_class(batch):
    return 4 * batch // CLASSES  # four batches an epoch: every window is one epoch


def run(ctx, num_workers, pin_memory, batch, image):
    from cudastack import jpegs, training

    torch = ctx.torch
    try:
        import torchvision  # noqa: F401  (ImageFolder and transforms)
    except ImportError:
        ctx.skip("torchvision is not installed in this environment")
    if pin_memory and not ctx.is_cuda:
        ctx.skip("pin_memory only speeds copies to a GPU; this run is on cpu")
    root = jpegs.folder(CLASSES, images_per_class(batch), round(image * SOURCE_SCALE))
    batches = jpegs.loader(torch, root, image, batch, num_workers, pin_memory)
    stream = jpegs.forever(batches)

    def next_batch():
        x, y = next(stream)
        # The copy to the device is part of the input pipeline; pinned memory makes it async.
        return x.to(ctx.device, non_blocking=pin_memory), y.to(ctx.device, non_blocking=pin_memory)

    def make_step(wrap):
        nn = torch.nn
        net = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * (image // 2) ** 2, 128),
            nn.ReLU(),
            nn.Linear(128, CLASSES),
        ).to(ctx.device)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        net = wrap(net)
        loss_fn = nn.CrossEntropyLoss()

        def step(b):
            x, y = b
            loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        return step

    # The loader's worker processes end with it, when this case's objects are collected.
    return training.measure(
        ctx,
        training.Workload(
            make_step, next_batch, cycle=len(batches), items_per_step=batch, unit="img/s"
        ),
    )
