"""The order worker (`faceharmony-order-worker`): claims paid orders, asks Triton for their images, stores them."""
